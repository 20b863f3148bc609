"""deeplab_axial.export: SavedModel export for TF Serving and REST payload helpers."""
from deeplab_axial.export.from_config import export_from_config
from deeplab_axial.export.from_config import restore_from_config
from deeplab_axial.export.rest import rest_predict
from deeplab_axial.export.rest import rest_request
from deeplab_axial.export.rest import rest_response_to_arrays
from deeplab_axial.export.saved_model import BYTES_SIGNATURE
from deeplab_axial.export.saved_model import DEFAULT_SIGNATURE
from deeplab_axial.export.saved_model import PanopticServingModule
from deeplab_axial.export.saved_model import ServingOptions
from deeplab_axial.export.saved_model import export_saved_model
from deeplab_axial.export.saved_model import load_metadata
from deeplab_axial.export.saved_model import next_version
from deeplab_axial.export.saved_model import resolve_export_dir

__all__ = ["BYTES_SIGNATURE", "DEFAULT_SIGNATURE", "PanopticServingModule", "ServingOptions",
           "export_from_config", "export_saved_model", "load_metadata", "next_version", "resolve_export_dir",
           "restore_from_config",
           "rest_predict", "rest_request", "rest_response_to_arrays"]
