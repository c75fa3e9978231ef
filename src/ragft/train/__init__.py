"""The training layer: supervised fine-tuning with LoRA, QLoRA or full fine-tuning, measured."""

from .data import SFTExample, TrainingDataError, example, load_jsonl, save_jsonl, tokenize
from .trainer import METHODS, TrainConfig, TrainResult, load_artifact, merged, train
from . import tasks
