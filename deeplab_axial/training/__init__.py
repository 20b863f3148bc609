"""deeplab_axial.training."""
from deeplab_axial.training.optimizers import build_optimizer
from deeplab_axial.training.optimizers import build_schedule
from deeplab_axial.training.optimizers import ConstantLearningRate
from deeplab_axial.training.optimizers import CosineLearningRate
from deeplab_axial.training.optimizers import LinearWarmup
from deeplab_axial.training.optimizers import Lookahead
from deeplab_axial.training.optimizers import PolyLearningRate
from deeplab_axial.training.optimizers import RectifiedAdam
from deeplab_axial.training.optimizers import StepLearningRate
from deeplab_axial.training.sync_batch_norm import enable_sync_batch_norm
