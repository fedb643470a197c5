"""`capfilt pretrain`, `capfilt finetune caption|filter|retrieval|vqa|nlvr2|dialog` and `capfilt evaluate`.

Thin typed commands over pipelines/train: `run_training(TrainSettings)`,
`run_task_training(TaskFinetuneSettings)` (the downstream tasks) and `evaluate(EvaluateSettings)`.
The same commands run on a laptop (a local Ray is started) and on a cluster (`RAY_ADDRESS`, or
`ray job submit -- capfilt pretrain ...`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import typer
from pydantic import BaseModel, ValidationError

from capfilt.settings_cli import EXIT_BAD_SETTINGS, format_validation_error, settings_command
from pipelines.train.settings import EvaluateSettings, FinetuneSettings, JobSettings, Task, TrainSettings
from pipelines.train.tasks.settings import FinetuneTask, TaskFinetuneSettings, TaskJobSettings

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


def _train_task(task: FinetuneTask, job: TaskJobSettings) -> int:
    from model.weights_io import CheckpointError
    from pipelines.train.data import DataError
    from pipelines.train.tasks.job import run_task_training

    try:
        summary = run_task_training(TaskFinetuneSettings.for_task(task, job))
    except (DataError, CheckpointError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return EXIT_BAD_SETTINGS
    typer.echo(json.dumps(summary, indent=2))
    return 0


@dataclass(frozen=True)
class FinetuneCommand:
    """One `capfilt finetune NAME`: the flags it takes (a settings class), the runner that trains
    it, the recipe the runner is given (`retrieval` trains the filter's recipe) and its help, prose
    over several lines that `one_line_help` folds into the one line typer shows."""

    settings: type[BaseModel]
    runner: Callable[[Any, Any], int]
    recipe: str
    help: str

    @property
    def one_line_help(self) -> str:
        return " ".join(self.help.split())

    def run(self, settings: BaseModel) -> int:
        return self.runner(self.recipe, settings)


# Registered in this order, which is the order `capfilt finetune --help` lists them in.
FINETUNE_COMMANDS: dict[str, FinetuneCommand] = {
    "caption": FinetuneCommand(FinetuneSettings, _train, "caption", help="""
        Fine-tune the captioner: LM with label smoothing, after the prompt.
        OUTPUT/model is what `capfilt bootstrap --captioner` takes."""),
    "filter": FinetuneCommand(FinetuneSettings, _train, "filter", help="""
        Fine-tune the filter: ITC + ITM with hard negatives.
        OUTPUT/model is what `capfilt bootstrap --filter` takes."""),
    "retrieval": FinetuneCommand(FinetuneSettings, _train, "filter", help="""
        Fine-tune for image-text retrieval: the filter's recipe (ITC + ITM with hard negatives)
        under the task's own name. OUTPUT/model is a filter too."""),
    "vqa": FinetuneCommand(TaskJobSettings, _train_task, "vqa", help="""
        Fine-tune for VQA (BLIP's blip_vqa): the image-grounded encoder reads the question, the
        decoder learns the answers (LM loss, answers weighted by their share). Data: tasks/vqa.parquet."""),
    "nlvr2": FinetuneCommand(TaskJobSettings, _train_task, "nlvr2", help="""
        Fine-tune for NLVR2 (BLIP's blip_nlvr): a statement against two images through a twin
        cross-attention, a true/false head. Data: tasks/nlvr2.parquet."""),
    "dialog": FinetuneCommand(TaskJobSettings, _train_task, "dialog", help="""
        Fine-tune for visual dialog: image, caption and history encoded, each candidate answer
        scored true/false by ITM. Data: tasks/dialog.parquet."""),
}

def register(app: typer.Typer) -> None:
    @settings_command(app, "pretrain", JobSettings,
                      help="Pre-train the MED (ITC+ITM+LM) with Ray Train on bootstrap output, toy-world "
                           "splits or img2dataset shards. Started again on the same --output, it resumes.")
    def pretrain(settings: JobSettings) -> int:
        return _train("pretrain", settings)

    finetune = typer.Typer(help="Fine-tune a pre-trained model for one task: caption (LM), filter / retrieval "
                                "(ITC+ITM), vqa, nlvr2, dialog.", no_args_is_help=True)
    app.add_typer(finetune, name="finetune")
    for name, command in FINETUNE_COMMANDS.items():
        settings_command(finetune, name, command.settings, help=command.one_line_help)(command.run)

    @settings_command(app, "evaluate", EvaluateSettings,
                      help="Evaluate a checkpoint on a split, per task (--tasks): retrieval (TR/IR R@1/5/10, "
                           "ITC then ITM re-rank of the top k), caption (BLEU-4, METEOR, ROUGE-L, CIDEr), "
                           "vqa (VQA accuracy, answers generated or ranked), nlvr2 (accuracy), dialog (MRR, "
                           "R@1/5/10, mean rank), zero-shot video_retrieval (R@1/5/10, median rank) and "
                           "video_qa (accuracy).")
    def evaluate(settings: EvaluateSettings) -> int:
        from model.weights_io import CheckpointError
        from pipelines.train.data import DataError
        from pipelines.train.evaluate import evaluate as run_evaluate

        try:
            metrics = run_evaluate(settings)
        except (DataError, CheckpointError) as exc:
            typer.echo(f"error: {exc}", err=True)
            return EXIT_BAD_SETTINGS
        typer.echo(json.dumps(metrics, indent=2))
        return 0
