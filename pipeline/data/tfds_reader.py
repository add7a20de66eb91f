"""Reading a tensorflow-datasets split into `(text, label)` examples, offline where a download is
placed by hand; a missing download fails at once with the file to place, instead of retrying."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.data.readers import Examples
from pipeline.errors import DataError

log = logging.getLogger(__name__)


def read_tfds(
    name: str,
    split: str,
    *,
    task: str = "sentiment",
    text_field: str = "text",
    label_field: str = "label",
    data_dir: str | Path = "data/tfds",
    manual_dir: str | Path | None = None,
) -> Examples:
    """Read one split of a tensorflow-datasets dataset, preparing it first if needed.

    Downloads go through TFDS itself. On a machine without network, place the files TFDS would
    download in `manual_dir` (default `<data_dir>/downloads/manual`), named as in the builder's
    checksums; a missing file and an unreachable host fail at once with a `DataError`.

    Returns:
        Examples whose labels are the dataset's class names (`None` for `task="lm"`).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except Exception as err:  # TFDS raises several types for an unknown name
        raise DataError(f"data.tfds={name!r} is not a tensorflow-datasets name ({err})") from None
    manual_dir = Path(manual_dir) if manual_dir else Path(data_dir) / "downloads" / "manual"
    if not builder.is_prepared():
        _check_download_possible(builder, name, manual_dir)
        config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        try:
            builder.download_and_prepare(download_config=config)
        except OSError as err:
            raise DataError(_offline_message(builder, name, manual_dir, reason=str(err)[:200])) from None
    features = builder.info.features
    text_key = _tfds_text_key(features, text_field, name)
    label_key = None if task == "lm" else _tfds_label_key(features, label_field, name)
    try:
        dataset = builder.as_dataset(split=split)
    except (ValueError, KeyError) as err:
        raise DataError(f"data split {split!r} is not a valid split of {name}: {err}") from None
    names = features[label_key].names if label_key else None
    examples = Examples()
    for record in tfds.as_numpy(dataset):
        label = None
        if label_key:
            index = int(record[label_key])
            if index < 0:
                raise DataError(
                    f"{name} split {split!r} has hidden labels (-1); evaluate on a labelled split "
                    "(e.g. set data.test=validation) or carve one with data.test_fraction"
                )
            label = names[index]
        examples.add(record[text_key].decode("utf-8"), label)
    return examples


def _tfds_text_key(features, wanted: str, name: str) -> str:
    import tensorflow_datasets as tfds

    if wanted in features:
        return wanted
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if len(texts) != 1:
        raise DataError(f"{name} has no text feature {wanted!r}; set data.text_field to one of {list(features)}")
    return texts[0]


def _tfds_label_key(features, wanted: str, name: str) -> str:
    import tensorflow_datasets as tfds

    if wanted in features and isinstance(features[wanted], tfds.features.ClassLabel):
        return wanted
    raise DataError(
        f"{name} has no class-label feature {wanted!r}; set data.label_field to one of {list(features)}"
    )


def _check_download_possible(builder, name: str, manual_dir: Path) -> None:
    """Fail in seconds, not after minutes of retries, when a download cannot work."""
    import socket
    from urllib.parse import urlsplit

    urls = _needed_downloads(builder)
    if urls and all((manual_dir / info.filename).is_file() for info in urls.values()):
        return
    hosts = sorted({urlsplit(url).hostname for url in urls} - {None})
    for host in hosts:
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError as err:
            raise DataError(_offline_message(builder, name, manual_dir, reason=f"{host}: {err}")) from None


def _offline_message(builder, name: str, manual_dir: Path, reason: str) -> str:
    files = sorted({info.filename for info in _needed_downloads(builder).values()})
    listed = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    return (
        f"could not download TFDS dataset {name} ({reason}); to run offline, place {listed} in "
        f"{manual_dir} (or set data.manual_dir), or use local files with configs/sst2_local.yaml"
    )


def _needed_downloads(builder) -> dict:
    """The downloads this builder config needs: GLUE's builder lists all tasks' files."""
    urls = builder.url_infos or {}
    own = getattr(builder.builder_config, "data_url", None)
    return {own: urls[own]} if own in urls else urls
