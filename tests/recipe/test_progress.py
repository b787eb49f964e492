"""Progress events are one typed declaration: the recipe emits them, the job store keeps them, the API's schema
is theirs."""

from recipe.progress import Progress, Stage
from service.models import JobPublic
from vdcore.train import EpochMetrics

METRICS = EpochMetrics(epoch=3, epochs=10, data_loss=0.2, kl=float("inf"), kl_weight=1.0, lr=1e-3,
                       train_accuracy=0.9, val_accuracy=None, sparsity=0.5, compression=2.0, seconds=2.0)


def test_an_epoch_event_carries_its_metrics_and_an_eta_over_the_stages_to_come():
    progress = Progress.of_epoch(Stage.TRAINING, METRICS, later_epochs=5)
    assert (progress.stage, progress.epoch, progress.sparsity) == ("training", 3, 0.5)
    assert progress.eta_seconds == 2.0 * (10 - 3 + 5)


def test_numbers_json_cannot_hold_become_null():
    assert Progress.of_epoch(Stage.TRAINING, METRICS, 0).kl is None
    assert Progress(stage=Stage.TRAINING, data_loss=float("nan")).data_loss is None


def test_the_api_schema_is_the_events():
    schema = JobPublic.model_json_schema()
    progress = schema["$defs"]["Progress"]
    assert set(progress["properties"]) == set(Progress.model_fields)
    assert schema["$defs"]["Stage"]["enum"] == [stage.value for stage in Stage]
