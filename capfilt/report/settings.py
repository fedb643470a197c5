"""What `capfilt report` accepts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

ROUNDS_FILE = "rounds.json"
REPORT_FILE = "report.html"


class ReportSettings(BaseModel):
    """One static HTML page about a bootstrap output folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dir: Path = Field(description="Bootstrap output folder (parquet/, manifest.json).")
    labels: Path | None = Field(None, description="Labels (.parquet/.csv/.jsonl with key and noise or clean, "
                                                  "or a toy world folder): clean vs noisy histograms, "
                                                  "precision and recall.")
    rounds: Path | None = Field(None, description="rounds.json to show metrics across rounds "
                                                  "(default: DIR/rounds.json when it exists).")
    output: Path | None = Field(None, description="HTML file to write (default: DIR/report.html).")
    examples: int = Field(12, ge=0, le=1000, description="Images shown with their captions.")
    threshold: float | None = Field(None, ge=0, le=1, description="Threshold drawn on the plots "
                                                                  "(default: the bootstrap's, from its manifest).")

    @property
    def output_path(self) -> Path:
        return self.output if self.output is not None else self.dir / REPORT_FILE

    @property
    def rounds_path(self) -> Path | None:
        if self.rounds is not None:
            return self.rounds
        default = self.dir / ROUNDS_FILE
        return default if default.is_file() else None
