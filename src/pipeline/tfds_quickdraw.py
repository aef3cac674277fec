"""A TensorFlow Datasets builder for Quick, Draw! pen-stroke sketches (TFDS ships only bitmaps).

Import this module to register ``quickdraw_sketch_rnn``, then, offline::

    tfds.load("quickdraw_sketch_rnn/synthetic", try_gcs=False)
    tfds.load("quickdraw_sketch_rnn/local", try_gcs=False,
              download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=DIR)})

``synthetic`` is the embedded generated set; ``local`` reads sketch-rnn class files (``NAME.npz``)
from the manual folder through the restricted unpickler. Without a manual folder, ``local`` fetches
the official sketch-rnn class files (all 345, or the config's ``classes``) through TFDS's download
manager from ``base_url`` (the public ``quickdraw_dataset`` bucket by default)::

    builder = QuickdrawSketchRnn(config=QuickdrawSketchRnnConfig(name="cats", source="local", classes=("cat",)))
    builder.download_and_prepare()

The prepared data goes where TFDS puts it: ``data_dir`` if given, else ``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``. TFDS reuses prepared data by config name, so a ``local`` set prepared from
one manual folder remembers that folder's files (``manual_dir.json`` beside the data);
``tfds.load`` or ``builder.download_and_prepare`` from a folder with other files is refused in one line
(give that folder its own ``data_dir``) rather than answered with the first folder's sketches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from pipeline.download import OFFICIAL_BASE_URL, class_url, resolve_classes
from pipeline.strokes import load_sketchrnn_npz
from pipeline.synthetic import SHAPES, synthetic_split

_TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
MANUAL_STAMP = "manual_dir.json"  # beside prepared local data: the manual folder and its files' fingerprint


def _folder_fingerprint(folder: Path) -> str:
    """Return a fingerprint of a manual folder's class files: names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.npz")):
        stat = path.stat()
        digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class QuickdrawSketchRnnConfig(tfds.core.BuilderConfig):
    """``source="synthetic"``: the generated classes and counts; ``"local"``: files in the manual folder,
    else the official files of ``classes`` (all 345 when ``None``) downloaded from ``base_url``."""

    source: str = "synthetic"
    num_classes: int = 8
    per_split: dict[str, int] = dataclasses.field(default_factory=lambda: {"train": 400, "valid": 80, "test": 120})
    seed: int = 42
    classes: tuple[str, ...] | None = None
    base_url: str = OFFICIAL_BASE_URL


class QuickdrawSketchRnn(tfds.core.GeneratorBasedBuilder):
    """Quick, Draw! sketches as int16 stroke-3 sequences ``(dx, dy, pen_lifted)``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Synthetic and local sketch-rnn configs; local downloads the official files."}
    BUILDER_CONFIGS = [
        QuickdrawSketchRnnConfig(name="synthetic", description="The embedded synthetic shape sketches."),
        QuickdrawSketchRnnConfig(
            name="local", source="local", description="sketch-rnn NAME.npz class files in the manual folder."
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "For the `local` config, put sketch-rnn class files (NAME.npz with train/valid/test arrays of "
        "int16 stroke-3 sketches, e.g. from the Quick, Draw! sketchrnn release) in the manual folder, "
        "or give no manual folder to download the official files."
    )

    def download_and_prepare(self, **kwargs) -> None:
        """Prepare the data as TFDS does; for ``local`` from a manual folder, first refuse a folder whose files
        differ from the one the data in ``data_dir`` was prepared from (TFDS would reuse that data).

        Raises:
            ValueError: naming both folders and what to do.
        """
        config = kwargs.get("download_config")
        manual = getattr(config, "manual_dir", None) if config is not None else None
        stamp = Path(self.data_dir) / MANUAL_STAMP
        current = None
        if self.builder_config.source == "local" and manual and any(Path(manual).glob("*.npz")):
            current = _folder_fingerprint(Path(manual))
            if stamp.is_file():
                recorded = json.loads(stamp.read_text())
                if recorded["fingerprint"] != current:
                    raise ValueError(
                        f"quickdraw_sketch_rnn/{self.builder_config.name} in {self.data_dir} was prepared from "
                        f"{recorded['folder']}; {manual} holds other files: give it its own data_dir"
                    )
        super().download_and_prepare(**kwargs)
        if current is not None and not stamp.is_file():
            stamp.write_text(json.dumps({"folder": str(manual), "fingerprint": current}))

    def is_prepared(self) -> bool:
        """Return whether the data is prepared; for ``local`` data prepared from a manual folder, ``False``.

        ``tfds.load`` skips ``download_and_prepare`` for prepared data, so it would answer a second manual
        folder with the first one's sketches. Reported as not prepared, the data gets
        :meth:`download_and_prepare`, which checks the folder and, when it is the same, reuses the data.
        """
        prepared = super().is_prepared()
        if prepared and self.builder_config.source == "local" and (Path(self.data_dir) / MANUAL_STAMP).is_file():
            return False
        return prepared

    def _info(self) -> tfds.core.DatasetInfo:
        names = list(SHAPES)[: self.builder_config.num_classes] if self.builder_config.source == "synthetic" else None
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "strokes": tfds.features.Tensor(shape=(None, 3), dtype=np.int16),
                    "label": tfds.features.ClassLabel(names=names),
                    "key_id": tfds.features.Text(),
                }
            ),
            supervised_keys=("strokes", "label"),
            homepage="https://github.com/googlecreativelab/quickdraw-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        if config.source == "synthetic":
            classes = list(SHAPES)[: config.num_classes]
            return {
                _TFDS_SPLITS[split]: self._generate_examples(
                    {name: synthetic_split(name, split, count, config.seed) for name in classes}, split
                )
                for split, count in config.per_split.items()
            }
        files = self._manual_files(dl_manager)
        if not files:
            names = resolve_classes(config.classes)
            urls = {name: class_url(config.base_url, "sketchrnn", name) for name in names}
            files = {name: Path(path) for name, path in dl_manager.download(urls).items()}
        self.info.features["label"].names = list(files)
        loaded = {name: load_sketchrnn_npz(path) for name, path in files.items()}
        return {
            tfds_split: self._generate_examples({name: splits.get(split, []) for name, splits in loaded.items()}, split)
            for split, tfds_split in _TFDS_SPLITS.items()
        }

    @staticmethod
    def _manual_files(dl_manager: tfds.download.DownloadManager) -> dict[str, Path]:
        """Return class name -> ``NAME.npz`` in the manual folder; empty when there is none."""
        try:
            manual = Path(dl_manager.manual_dir)
        except AssertionError:  # TFDS's way of saying the manual folder is missing or empty
            return {}
        files = {p.stem: p for p in sorted(manual.glob("*.npz"))}
        if not files:
            raise FileNotFoundError(f"{manual}: holds no sketch-rnn .npz class files")
        return files

    def _generate_examples(self, sketches_by_class: dict[str, list[np.ndarray]], split: str):
        for name, sketches in sketches_by_class.items():
            for index, sketch in enumerate(sketches):
                key = f"{name}/{split}/{index}"
                yield key, {"strokes": np.asarray(sketch).astype(np.int16), "label": name, "key_id": key}
