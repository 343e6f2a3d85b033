"""What training writes into its output folder (`training.output_dir`), by name.

Serving and orchestration find the trained model through these names, so they live apart
from the loop that writes them.
"""

STATE_FILE = "training_state.pt"  # optimiser, schedule, sampler and RNG state of a checkpoint
CHECKPOINT_PREFIX = "checkpoint-"  # checkpoint-<step>/: resumable
FINAL_DIR = "final"  # the trained weights, a DVC output
METRICS_FILE = "metrics.json"  # DVC metrics of the train stage
EVALUATION_FILE = "evaluation.json"  # DVC metrics of the evaluate stage: the model's figures
RUN_FILE = "run.json"  # the MLflow run that made `final/`
