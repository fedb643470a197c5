"""`capfilt pretrain`, `capfilt finetune caption|filter` and `capfilt evaluate`.

Thin typed commands over pipelines/train: `run_training(TrainSettings)` and `evaluate(EvaluateSettings)`.
The same commands run on a laptop (a local Ray is started) and on a cluster (`RAY_ADDRESS`, or
`ray job submit -- capfilt pretrain ...`).
"""

from __future__ import annotations

import json

import typer
from pydantic import ValidationError

from capfilt.settings_cli import EXIT_BAD_SETTINGS, format_validation_error, settings_command
from pipelines.train.settings import EvaluateSettings, FinetuneSettings, JobSettings, Task, TrainSettings

EXIT_FAILED = 1


def _train(task: Task, job: JobSettings) -> int:
    from pipelines.train.data import DataError
    from pipelines.train.job import run_training

    try:
        settings = TrainSettings.for_task(task, job)
    except ValidationError as exc:
        typer.echo(f"error: {format_validation_error(TrainSettings, exc)}", err=True)
        return EXIT_BAD_SETTINGS
    try:
        summary = run_training(settings)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_BAD_SETTINGS
    typer.echo(json.dumps(summary, indent=2))
    if summary.get("replicas_equal") is False:
        typer.echo("error: the workers' weights differ after training", err=True)
        return EXIT_FAILED
    return 0


def register(app: typer.Typer) -> None:
    @settings_command(app, "pretrain", JobSettings,
                      help="Pre-train the MED (ITC+ITM+LM) with Ray Train on bootstrap output, toy-world "
                           "splits or img2dataset shards. Started again on the same --output, it resumes.")
    def pretrain(settings: JobSettings) -> int:
        return _train("pretrain", settings)

    finetune = typer.Typer(help="Fine-tune the captioner (LM) or the filter (ITC+ITM) on human pairs.",
                           no_args_is_help=True)
    app.add_typer(finetune, name="finetune")

    @settings_command(finetune, "caption", FinetuneSettings,
                      help="Fine-tune the captioner: LM with label smoothing, after the prompt. "
                           "OUTPUT/model is what `capfilt bootstrap --captioner` takes.")
    def caption(settings: FinetuneSettings) -> int:
        return _train("caption", settings)

    @settings_command(finetune, "filter", FinetuneSettings,
                      help="Fine-tune the filter: ITC + ITM with hard negatives. "
                           "OUTPUT/model is what `capfilt bootstrap --filter` takes.")
    def filter_(settings: FinetuneSettings) -> int:
        return _train("filter", settings)

    @settings_command(app, "evaluate", EvaluateSettings,
                      help="Zero-shot retrieval (TR/IR R@1/5/10, ITC then ITM re-rank of the top k) and "
                           "captioning (BLEU-4, CIDEr) of a checkpoint on a split.")
    def evaluate(settings: EvaluateSettings) -> int:
        from pipelines.train.data import DataError
        from pipelines.train.evaluate import evaluate as run_evaluate

        try:
            metrics = run_evaluate(settings)
        except DataError as exc:
            typer.echo(f"error: {exc}", err=True)
            return EXIT_BAD_SETTINGS
        typer.echo(json.dumps(metrics, indent=2))
        return 0
