"""`graph_call`: marks a layer's `call` as graph code that autograph leaves as written.

Keras runs the `call` of every subclassed layer through autograph, which parses and
rewrites that function and everything it calls (once per process), then traces the
rewritten code, which wraps every `if` and call in a dispatcher. Our layers branch on
tensors only through `tf.cond` / `tf.while_loop` / `smart_cond`, so the rewrite adds
nothing. Measured on the shapes demo model (33x33 crops, 2 training steps and an
evaluation, AVX2 machine): the rewrite was ~40% of building the model, and the whole
run took 91 s instead of 105-113 s without it.

`tf.autograph.experimental.do_not_convert` alone would hide `call`'s signature from
Keras (it would then pass `mask=` to layers that take none); re-attaching the original
as the decorator's target keeps `training` and the argument list visible.
"""
import tensorflow as tf


def graph_call(call):
  """Decorator for a layer's `call`: not converted by autograph, signature kept."""
  return tf.__internal__.decorator.make_decorator(
      call, tf.autograph.experimental.do_not_convert(call))
