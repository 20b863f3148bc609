"""deeplab_axial.data."""
from deeplab_axial.data import datasets  # noqa: E402
from deeplab_axial.data import encoding  # noqa: E402
from deeplab_axial.data import pipeline  # noqa: E402
from deeplab_axial.data.datasets import DatasetInfo  # noqa: E402
from deeplab_axial.data.datasets import get_dataset_info  # noqa: E402
from deeplab_axial.data.pipeline import build_classification_dataset  # noqa: E402
from deeplab_axial.data.pipeline import build_panoptic_dataset  # noqa: E402
from deeplab_axial.data.pipeline import decode_example  # noqa: E402
