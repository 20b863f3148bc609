"""Build hooks: compile deeplab_axial/protos/*.proto with grpc_tools at install time."""
import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

_ROOT = os.path.dirname(os.path.abspath(__file__))


def compile_protos(output_root):
  """Compiles every .proto under deeplab_axial/protos into `output_root`."""
  from grpc_tools import protoc  # pylint: disable=import-outside-toplevel
  import grpc_tools  # pylint: disable=import-outside-toplevel

  include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
  for proto in sorted(glob.glob(os.path.join(_ROOT, "deeplab_axial", "protos", "*.proto"))):
    rel = os.path.relpath(proto, _ROOT)
    code = protoc.main(["grpc_tools.protoc", f"-I{_ROOT}", f"-I{include}",
                        f"--python_out={output_root}", f"--pyi_out={output_root}", rel])
    if code != 0:
      raise RuntimeError(f"protoc failed on {rel} (exit code {code})")


class BuildPyWithProtos(build_py):
  """build_py that also writes the generated *_pb2.py modules."""

  def run(self):
    # Generated next to the .proto files: editable installs import them from the source
    # tree, and build_py copies them into the wheel with the rest of the package.
    compile_protos(_ROOT)
    super().run()


class DevelopWithProtos(develop):

  def run(self):
    compile_protos(_ROOT)
    super().run()


setup(cmdclass={"build_py": BuildPyWithProtos, "develop": DevelopWithProtos})
