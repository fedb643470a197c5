"""Where each part of a made world lies, relative to its directory, and what its URLs look like.

```
OUT/
  settings.json        the WorldMakeSettings that shaped the bytes (no paths)
  manifest.json        counts per split, noise and fetch-failure counts, file list
  scenes.jsonl         one scene per line, every split (the checker's ground truth)
  web.parquet          key, url, caption            <- the pipeline's input, nothing more
  web_urls.txt         one url a line (img2dataset --input_format txt)
  web_labels.parquet   key, image_id, format, noise, wrong, source, true_caption, fetch
  human.parquet        image_id, image, caption     (one row per caption; several per image)
  val.parquet          image_id, image, caption     (5 per image)
  test.parquet         image_id, image, caption     (5 per image)
  images/<split>/<image_id>.<jpg|png>
  images/clips/<clip_id>/<frame>.png
  tasks/vqa.parquet, tasks/nlvr2.parquet, tasks/dialog.parquet,
  tasks/clips.parquet, tasks/clips_qa.parquet
```
"""

from __future__ import annotations

SETTINGS = "settings.json"
MANIFEST = "manifest.json"
SCENES = "scenes.jsonl"
WEB = "web.parquet"
WEB_URLS = "web_urls.txt"
WEB_LABELS = "web_labels.parquet"
CLEAN_SPLITS = ("human", "val", "test")
TASKS = ("vqa", "nlvr2", "dialog", "clips", "clips_qa")

TABLES = {
    "web": WEB,
    "web_labels": WEB_LABELS,
    **{s: f"{s}.parquet" for s in CLEAN_SPLITS},
    **{t: f"tasks/{t}.parquet" for t in TASKS},
}

ID_PREFIX = {"web": "w", "human": "h", "val": "v", "test": "t", "clips": "c"}


def image_id(split: str, index: int) -> str:
    return f"{ID_PREFIX[split]}{index:07d}"


def image_relpath(split: str, image_id: str, fmt: str) -> str:
    return f"images/{split}/{image_id}.{fmt}"


def clip_frame_relpath(clip_id: str, frame: int) -> str:
    return f"images/clips/{clip_id}/{frame}.png"


def web_url(base_url: str, key: str, fmt: str) -> str:
    """The URL of a web image; the server maps the path `/web/<key>.<fmt>` back to its file."""
    return f"{base_url.rstrip('/')}/web/{key}.{fmt}"


def key_from_url(url: str) -> str:
    """The web key a URL was made from, whatever base URL it points at. img2dataset reserves a
    column named `key` for its own, so its output is joined back to the labels this way."""
    return url.rsplit("/", 1)[-1].split(".", 1)[0]
