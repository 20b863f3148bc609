"""TF Serving REST payloads: build requests, decode responses, emulate the server in-process.

TF Serving's REST predict API (`POST /v1/models/NAME[/versions/N]:predict`) takes

* row format: `{"signature_name": S, "instances": [row, ...]}`; a row is the value of the
  signature's only input, or a dict input name → value; answered by
  `{"predictions": [row, ...]}` where a row is a dict output name → value (or the bare
  value when the signature has one output);
* columnar format: `{"signature_name": S, "inputs": value-or-dict}`; answered by
  `{"outputs": value-or-dict}`.

Binary strings travel as `{"b64": "<base64>"}`; outputs whose names end in `_bytes` come
back the same way. `rest_request` builds requests for the signatures of
`deeplab_axial.export.saved_model`, `rest_response_to_arrays` turns a response into NumPy
arrays, and `rest_predict` runs a request against a loaded SavedModel with the same
translation rules, so payloads can be tested without a server.
"""
import base64
import io
import json
import os

import numpy as np
import tensorflow as tf

from deeplab_axial.export import saved_model

# Output dtypes of our signatures (JSON numbers carry no dtype).
_OUTPUT_DTYPES = {"panoptic": np.int32, "semantic": np.int32, "instance": np.int32,
                  "instance_panoptic_ids": np.int32, "image_height": np.int32,
                  "image_width": np.int32, "semantic_probs": np.float32,
                  "center_heatmap": np.float32, "instance_scores": np.float32}


def _encode_png(image):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _as_uint8_image(image, index):
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"images[{index}] must be a uint8 [height, width, 3] array, got dtype "
                     f"{image.dtype} shape {image.shape}")
  return image


def _image_list(images):
  """Splits `images` (a [b, h, w, 3] array or a sequence) into a list of items."""
  if isinstance(images, np.ndarray):
    if images.ndim == 3:
      raise ValueError(f"images must be a batch [batch, height, width, 3] or a list, got a "
                       f"single image of shape {images.shape}; wrap it in a list")
    return list(images)
  if isinstance(images, (str, bytes, os.PathLike)):
    return [images]
  return list(images)


def rest_request(images, signature_name=None, use_bytes=True):
  """A TF Serving REST predict body (row format) for our signatures.

  Args:
    images: uint8 `[batch, height, width, 3]` array, or a list whose items are uint8
      `[height, width, 3]` arrays, encoded image bytes, or image file paths.
    signature_name: default `serve_image_bytes` with `use_bytes`, else `serving_default`.
    use_bytes: send `{"b64": ...}` encoded images (arrays are PNG-encoded, losslessly;
      files and bytes are sent as they are). False sends raw uint8 nested lists, which
      needs arrays (or decodable files) of one size and is ~10x larger.

  Returns:
    A JSON-serializable dict `{"signature_name": ..., "instances": [...]}`.

  Raises:
    ValueError: on empty input, bad arrays, or (raw lists) images of different sizes.
    FileNotFoundError: for a missing image file.
  """
  items = _image_list(images)
  if not items:
    raise ValueError("images is empty; a request needs at least one image")
  if use_bytes:
    instances = [{"b64": base64.b64encode(_item_bytes(item, i)).decode("ascii")}
                 for i, item in enumerate(items)]
    signature_name = signature_name or saved_model.BYTES_SIGNATURE
  else:
    arrays = [_item_array(item, i) for i, item in enumerate(items)]
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
      raise ValueError(f"raw uint8 requests need images of one size (the signature input is "
                       f"one [batch, height, width, 3] tensor), got shapes "
                       f"{sorted(shapes)}; use use_bytes=True")
    instances = [array.tolist() for array in arrays]
    signature_name = signature_name or saved_model.DEFAULT_SIGNATURE
  return {"signature_name": signature_name, "instances": instances}


def _item_bytes(item, index):
  if isinstance(item, bytes):
    return item
  if isinstance(item, (str, os.PathLike)):
    if not os.path.isfile(item):
      raise FileNotFoundError(f"images[{index}]: image file {item} does not exist")
    with open(item, "rb") as f:
      return f.read()
  return _encode_png(_as_uint8_image(item, index))


def _item_array(item, index):
  if isinstance(item, (bytes, str, os.PathLike)):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    data = _item_bytes(item, index)
    try:
      return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except OSError as e:
      raise ValueError(f"images[{index}] cannot be decoded as an image: {e}") from e
  return _as_uint8_image(item, index)


def rest_response_to_arrays(response_json, dtypes=None):
  """Turns a REST predict response into a dict of NumPy arrays.

  Args:
    response_json: the response body (str/bytes JSON or the parsed dict), in row
      (`predictions`) or columnar (`outputs`) format.
    dtypes: optional output name → NumPy dtype; defaults cover our signatures' outputs;
      other integer outputs become int64 and others float32.

  Returns:
    Dict output name → array with the batch as the first axis (a single unnamed output is
    returned under the key "output"). `{"b64": ...}` values become `bytes` objects.

  Raises:
    ValueError: for an error response or a body with neither key.
  """
  response = json.loads(response_json) if isinstance(response_json, (str, bytes)) else (
      response_json)
  if not isinstance(response, dict):
    raise ValueError(f"response must be a JSON object, got {type(response).__name__}")
  if "error" in response:
    raise ValueError(f"the server returned an error: {response['error']}")
  if "predictions" in response:
    rows = response["predictions"]
    if rows and isinstance(rows[0], dict):
      columns = {name: [row[name] for row in rows] for name in rows[0]}
    else:
      columns = {"output": rows}
  elif "outputs" in response:
    outputs = response["outputs"]
    columns = outputs if isinstance(outputs, dict) else {"output": outputs}
  else:
    raise ValueError(f"response holds neither 'predictions' nor 'outputs'; keys: "
                     f"{sorted(response)}")
  dtypes = {**_OUTPUT_DTYPES, **(dtypes or {})}
  return {name: _to_array(value, dtypes.get(name)) for name, value in columns.items()}


def _to_array(value, dtype):
  decoded = _decode_b64(value)
  if _contains_bytes(decoded):
    return np.array(decoded, dtype=object)
  array = np.asarray(decoded)
  if dtype is not None:
    return array.astype(dtype)
  return array.astype(np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32)


def _decode_b64(value):
  if isinstance(value, dict) and set(value) == {"b64"}:
    return base64.b64decode(value["b64"])
  if isinstance(value, list):
    return [_decode_b64(v) for v in value]
  return value


def _contains_bytes(value):
  while isinstance(value, list) and value:
    value = value[0]
  return isinstance(value, bytes)


def _encode_b64(value):
  if isinstance(value, bytes):
    return {"b64": base64.b64encode(value).decode("ascii")}
  if isinstance(value, list):
    return [_encode_b64(v) for v in value]
  return value


def rest_predict(loaded, request_json):
  """Runs a REST predict body against a loaded SavedModel the way TF Serving translates it.

  Args:
    loaded: `tf.saved_model.load(export_dir)`.
    request_json: the request body (str/bytes JSON or the parsed dict).

  Returns:
    The response body as a JSON-serializable dict (`predictions` or `outputs`).

  Raises:
    ValueError: for malformed requests (unknown signature or input names, rows of
      different batch structure), as TF Serving answers with an error.
  """
  request = json.loads(request_json) if isinstance(request_json, (str, bytes)) else (
      request_json)
  if not isinstance(request, dict):
    raise ValueError(f"request must be a JSON object, got {type(request).__name__}")
  name = request.get("signature_name", saved_model.DEFAULT_SIGNATURE)
  if name not in loaded.signatures:
    raise ValueError(f"unknown signature_name {name!r}; the model has "
                     f"{sorted(loaded.signatures)}")
  signature = loaded.signatures[name]
  specs = signature.structured_input_signature[1]
  if ("instances" in request) == ("inputs" in request):
    raise ValueError("the request must hold exactly one of 'instances' (row format) and "
                     "'inputs' (columnar format)")
  if "instances" in request:
    columns = _rows_to_columns(request["instances"], specs)
  else:
    inputs = request["inputs"]
    columns = inputs if isinstance(inputs, dict) else {_only_input(specs): inputs}
  unknown = sorted(set(columns) - set(specs))
  missing = sorted(set(specs) - set(columns))
  if unknown or missing:
    raise ValueError(f"signature {name!r} takes inputs {sorted(specs)}; the request has "
                     f"unknown {unknown} and lacks {missing}")
  tensors = {key: tf.constant(_decode_b64(value), dtype=specs[key].dtype)
             for key, value in columns.items()}
  outputs = {key: value.numpy().tolist() for key, value in signature(**tensors).items()}
  outputs = {key: _encode_b64(value) if key.endswith("_bytes") else value
             for key, value in outputs.items()}
  if "inputs" in request:
    return {"outputs": outputs if len(outputs) > 1 else next(iter(outputs.values()))}
  sizes = {key: len(value) for key, value in outputs.items()}
  if len(set(sizes.values())) > 1:
    raise ValueError(f"row format needs every output to share the batch size; got {sizes}")
  rows = [{key: value[i] for key, value in outputs.items()}
          for i in range(next(iter(sizes.values())))]
  if len(outputs) == 1:
    rows = [next(iter(row.values())) for row in rows]
  return {"predictions": rows}


def _only_input(specs):
  if len(specs) != 1:
    raise ValueError(f"bare values need a single-input signature; this one takes "
                     f"{sorted(specs)}, so send dicts of named inputs")
  return next(iter(specs))


def _rows_to_columns(instances, specs):
  if not isinstance(instances, list) or not instances:
    raise ValueError("'instances' must be a non-empty list (one row per example)")
  if all(isinstance(row, dict) and set(row) != {"b64"} for row in instances):
    keys = set(instances[0])
    if any(set(row) != keys for row in instances):
      raise ValueError("every row of 'instances' must name the same inputs")
    return {key: [row[key] for row in instances] for key in keys}
  return {_only_input(specs): instances}


__all__ = ["rest_predict", "rest_request", "rest_response_to_arrays"]
