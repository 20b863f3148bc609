"""REST payloads: request format, the in-process TF Serving translation, response decoding."""
import base64
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_axial import export

from tests.export import export_fixtures


def _direct(loaded, signature, **inputs):
  outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
  return {key: value.numpy() for key, value in outputs.items()}


def _assert_same(arrays, direct):
  assert sorted(arrays) == sorted(direct)
  for key, value in direct.items():
    assert arrays[key].dtype == value.dtype, key
    np.testing.assert_array_equal(arrays[key], value, err_msg=key)


def test_bytes_request_format_and_round_trip(loaded):
  rng = np.random.default_rng(3)
  images = [export_fixtures.scene_images(rng, 1, 20, 26)[0],
            export_fixtures.scene_images(rng, 1, 24, 18)[0]]
  request = export.rest_request(images)
  assert request["signature_name"] == "serve_image_bytes"
  assert [set(row) for row in request["instances"]] == [{"b64"}, {"b64"}]
  # The payload decodes (independently, with PIL) to the exact pixels.
  for row, image in zip(request["instances"], images):
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["b64"]))))
    np.testing.assert_array_equal(decoded, image)
  # Through JSON text both ways, as over HTTP.
  response = json.dumps(export.rest_predict(loaded, json.dumps(request)))
  arrays = export.rest_response_to_arrays(response)
  encoded = [base64.b64decode(row["b64"]) for row in request["instances"]]
  direct = _direct(loaded, "serve_image_bytes", image_bytes=encoded)
  _assert_same(arrays, direct)


def test_raw_uint8_request_round_trip_row_and_columnar(loaded):
  images = export_fixtures.scene_images(np.random.default_rng(4), 2, 17, 21)
  request = export.rest_request(images, use_bytes=False)
  assert request["signature_name"] == "serving_default"
  assert request["instances"][1] == images[1].tolist()
  direct = _direct(loaded, "serving_default", images=images)
  _assert_same(export.rest_response_to_arrays(
      json.dumps(export.rest_predict(loaded, json.dumps(request)))), direct)
  # Columnar format: {"inputs": {...}} answered by {"outputs": {...}}.
  columnar = {"signature_name": "serving_default", "inputs": {"images": images.tolist()}}
  response = export.rest_predict(loaded, columnar)
  assert set(response) == {"outputs"}
  _assert_same(export.rest_response_to_arrays(json.dumps(response)), direct)


def test_named_input_rows_and_files(loaded, tmp_path):
  image = export_fixtures.scene_images(np.random.default_rng(5), 1, 9, 11)[0]
  path = tmp_path / "a.png"
  Image.fromarray(image).save(path)
  request = export.rest_request([str(path)])
  assert base64.b64decode(request["instances"][0]["b64"]) == path.read_bytes()
  named = {"signature_name": "serve_image_bytes",
           "instances": [{"image_bytes": request["instances"][0]}]}
  direct = _direct(loaded, "serve_image_bytes", image_bytes=[path.read_bytes()])
  _assert_same(export.rest_response_to_arrays(export.rest_predict(loaded, named)), direct)


def test_request_errors(loaded):
  with pytest.raises(ValueError, match="images is empty"):
    export.rest_request([])
  with pytest.raises(ValueError, match="need images of one size"):
    export.rest_request([np.zeros((4, 5, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)],
                        use_bytes=False)
  with pytest.raises(ValueError, match=r"images\[0\] must be a uint8"):
    export.rest_request([np.zeros((4, 5, 3), np.float32)])
  with pytest.raises(FileNotFoundError, match="missing.png"):
    export.rest_request(["missing.png"])
  with pytest.raises(ValueError, match="unknown signature_name 'nope'"):
    export.rest_predict(loaded, {"signature_name": "nope", "instances": [[0]]})
  with pytest.raises(ValueError, match="exactly one of 'instances'"):
    export.rest_predict(loaded, {"signature_name": "serving_default"})
  with pytest.raises(ValueError, match=r"lacks \['images'\]"):
    export.rest_predict(loaded, {"inputs": {"pixels": [[[[0, 0, 0]]]]}})


def test_response_decoding_of_tf_serving_shapes():
  # Hand-written responses in TF Serving's documented shapes.
  arrays = export.rest_response_to_arrays(
      {"predictions": [{"panoptic": [[1, 2]], "scores": [0.5]},
                       {"panoptic": [[3, 4]], "scores": [1.0]}]})
  assert arrays["panoptic"].dtype == np.int32
  np.testing.assert_array_equal(arrays["panoptic"], [[[1, 2]], [[3, 4]]])
  assert arrays["scores"].dtype == np.float32
  single = export.rest_response_to_arrays('{"predictions": [[1, 2], [3, 4]]}')
  np.testing.assert_array_equal(single["output"], [[1, 2], [3, 4]])
  raw = export.rest_response_to_arrays({"outputs": {"png_bytes": [{"b64": "aGk="}]}})
  assert raw["png_bytes"][0] == b"hi"
  with pytest.raises(ValueError, match="the server returned an error: boom"):
    export.rest_response_to_arrays({"error": "boom"})
