"""cuDNN's masked LSTM/GRU on real-length batches: the pipeline's own batches of real drawings, on a GPU.

    # here (TensorFlow installed): the batches, and Keras's own cuDNN mask check on every one of them
    .venv/bin/python benchmarks/cudnn_check.py export --out .gpucheck [--max-len 1000] [--epochs 3]
    # on a machine with an NVIDIA GPU and PyTorch (numpy and torch only; no TensorFlow needed there)
    python3 benchmarks/cudnn_check.py check .gpucheck [--json benchmarks/results/cudnn_check.json]

On a GPU, Keras runs ``LSTM`` and ``GRU`` through cuDNN by default (TensorFlow's ``CudnnRNNV3`` with one
sequence length per sketch). Before it, Keras checks the mask: padding only at the end of each sequence
and no sequence all padding; otherwise training stops with "You are passing a RNN mask that does not
correspond to right-padded sequences". A CPU never runs that check, so ``export`` runs it (the
TensorFlow backend's ``_assert_valid_mask``) on every batch that training makes of the real raw sample
in ``../shared/data/quickdraw-raw-345`` over ``--epochs`` epochs, with the real-data profile's
augmentation, at real lengths (``--max-len 1000``: no sketch cropped), and on every validation and test
batch. It saves the batches (``batches.npz``, plain arrays: no pickle).

``check`` runs those batches through cuDNN's RNN (PyTorch's ``nn.LSTM`` / ``nn.GRU`` with packed
sequences: one length per sketch, the layout Keras's cuDNN path uses) in the profile's shape (two
bidirectional layers of 64 units over the strokes, absolute positions and stroke index, as the models
derive them) and checks:

- the mask rule again, and that cuDNN is what runs;
- padding invariance: each sketch's final states in its padded batch equal those of the sketch run alone
  at its own length (TF32 off), largest difference reported;
- cuDNN against the GPU's non-cuDNN kernels (the same weights, cuDNN turned off) on the longest batches;
- training throughput (forward and backward) at the profile's batch size and at 1,024 sketches, real
  lengths, cuDNN and non-cuDNN side by side in the same process; peak GPU memory.

Results: JSON (``--json``) and a table. TensorFlow itself does not run there in this workplace: its GPU
build with CUDA 12 libraries is about 1.8 GB of wheels, and the device image has PyTorch with CUDA 13.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REAL_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "quickdraw-raw-345"
RESULTS = Path(__file__).parent / "results"


def mask_of(strokes: np.ndarray) -> np.ndarray:
    """Return the models' padding mask of a ``(batch, time, 3)`` batch: a step is real if any feature is not 0."""
    return np.any(strokes != 0, axis=-1)


def right_padded(mask: np.ndarray) -> bool:
    """Return whether every row of ``mask`` is real steps then padding, with at least one real step
    (Keras's ``_is_sequence_right_padded`` and not ``_has_fully_masked_sequence``)."""
    lengths = mask.sum(axis=1)
    return bool(np.all(lengths > 0) and np.array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None]))


# --------------------------------------------------------------------------------------------- export


def export(out: Path, max_len: int, epochs: int, config: str) -> dict:
    """Make the real sample's batches as training and evaluation do, check each with Keras's cuDNN mask
    check, and save them to ``out/batches.npz``; return what was checked."""
    sys.path.insert(0, str(Path(__file__).parent))
    import real_accuracy

    from pipeline.config import configure_runtime, load_settings

    configure_runtime()
    import tensorflow as tf
    from keras.src.backend.tensorflow.rnn import _assert_valid_mask

    from pipeline.features import make_dataset
    from pipeline.ingest import ingest
    from pipeline.models import POSITION_SCALE
    from pipeline.stages import data
    from pipeline.stages.training import training_config

    work = out / "work"
    overrides = {**real_accuracy._data_overrides(work, 1), "max_len": max_len}
    settings = load_settings(config, overrides, environ={})
    features = data.preprocess(settings, data.validate(settings, ingest(settings)))
    augmentation = training_config(settings, "lstm").augmentation
    arrays, counts, longest = {}, {}, 0
    splits = [("train", epochs, augmentation), ("valid", 1, None), ("test", 1, None)]
    for split, passes, augment in splits:
        dataset = make_dataset(features, split, settings.batch_size, shuffle=split == "train",
                               seed=settings.seed, augmentation=augment)  # fmt: skip
        counts[split] = 0
        for epoch in range(passes):
            for i, (strokes, _) in enumerate(dataset):
                _assert_valid_mask(tf.constant(mask_of(strokes.numpy())))  # raises as the GPU path would
                counts[split] += 1
                longest = max(longest, int(strokes.shape[1]))
                if epoch == 0:
                    arrays[f"{split}_{i:05d}"] = strokes.numpy()
    arrays["position_scale"] = np.float32(POSITION_SCALE)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "batches.npz", **arrays)
    return {"batches_checked": counts, "epochs": epochs, "max_len": max_len, "longest_batch": longest,
            "augmentation": str(augmentation)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- check


def _features(torch, strokes, position_scale):
    """The recurrent models' inputs with ``positions``: strokes, absolute position, stroke index; padding 0."""
    mask = (strokes != 0).any(-1, keepdim=True).to(strokes.dtype)
    absolute = torch.cumsum(strokes[..., :2], dim=1) * position_scale
    pen = strokes[..., 2:]
    stroke = (torch.cumsum(pen, dim=1) - pen) * 0.1
    return torch.cat([strokes, absolute, stroke], dim=-1) * mask


def _final_states(torch, rnn, x, lengths):
    """Return every sketch's final states (layers x directions, batch, units) through packed sequences."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, states = rnn(packed)
    return states[0] if isinstance(states, tuple) else states


def check(folder: Path, json_path: Path, device_name: str = "cuda") -> dict:
    """Run the checks on ``device_name`` (``cpu``: a dry run of the script, no cuDNN); return the results."""
    import torch

    device = torch.device(device_name)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
        assert torch.backends.cudnn.is_available(), "cuDNN is not available to PyTorch"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with np.load(folder / "batches.npz", allow_pickle=False) as npz:
        position_scale = float(npz["position_scale"])
        batches = {k: npz[k] for k in npz.files if k != "position_scale"}
    train = [v for k, v in sorted(batches.items()) if k.startswith("train_")]
    every = list(batches.values())
    assert all(right_padded(mask_of(b)) for b in every), "a batch is not right-padded"
    lengths_all = np.concatenate([mask_of(b).sum(axis=1) for b in every])
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "batches": len(every),
        "sketches": len(lengths_all),
        "length_median_p99_max": [int(np.percentile(lengths_all, q)) for q in (50, 99, 100)],
    }
    torch.manual_seed(0)
    rows = []
    for kind in ("LSTM", "GRU"):
        rnn = getattr(torch.nn, kind)(6, 64, num_layers=2, bidirectional=True, batch_first=True).to(device)

        def inputs(batch):
            strokes = torch.from_numpy(batch).to(device)
            lengths = (strokes != 0).any(-1).sum(1)
            return _features(torch, strokes, position_scale), lengths

        # padding invariance through cuDNN: each sketch alone at its own length against its padded batch
        worst, alone_checked = 0.0, 0
        with torch.no_grad():
            for batch in sorted(every, key=lambda b: -b.shape[1])[:6] + every[:: max(len(every) // 10, 1)]:
                x, lengths = inputs(batch)
                together = _final_states(torch, rnn, x, lengths)
                for i in range(0, len(batch), 7):
                    n = int(lengths[i])
                    alone = _final_states(torch, rnn, x[i : i + 1, :n], lengths[i : i + 1])
                    worst = max(worst, float((alone[:, 0] - together[:, i]).abs().max()))
                    alone_checked += 1
            # cuDNN against the GPU's own non-cuDNN kernels, on the longest batches
            gap = 0.0
            for batch in sorted(every, key=lambda b: -b.shape[1])[:4]:
                x, lengths = inputs(batch)
                with_cudnn = _final_states(torch, rnn, x, lengths)
                with torch.backends.cudnn.flags(enabled=False):
                    without = _final_states(torch, rnn, x, lengths)
                gap = max(gap, float((with_cudnn - without).abs().max()))
        row = {"rnn": f"bidirectional {kind}, 2 x 64", "padding_max_abs_diff": worst, "sketches_alone": alone_checked,
               "cudnn_vs_native_max_abs_diff": gap}  # fmt: skip
        # training throughput at real lengths: the profile's batches, and the same sketches in batches of 1,024
        head = torch.nn.Linear(128, 345).to(device)
        big = _rebatch(train, 1024)
        for label, group in (("batch_64", train), ("batch_1024", big)):
            for name, cudnn in (("cudnn", True), ("native", False)):
                with torch.backends.cudnn.flags(enabled=cudnn):
                    row[f"{label}_{name}_sketches_per_s"] = _train_rate(torch, rnn, head, group, inputs, device)
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
    result["rows"] = rows
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    return result


def _rebatch(batches: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Return the sketches of ``batches`` sorted by length and cut into batches of ``size``, each padded
    at the end to its longest sketch (as bucketing would, with wider buckets)."""
    sketches = [row[: int(mask.sum())] for b in batches for row, mask in zip(b, mask_of(b), strict=True)]
    sketches.sort(key=len)
    out = []
    for start in range(0, len(sketches), size):
        group = sketches[start : start + size]
        batch = np.zeros((len(group), max(map(len, group)), 3), np.float32)
        for i, sketch in enumerate(group):
            batch[i, : len(sketch)] = sketch
        out.append(batch)
    return out


def _train_rate(torch, rnn, head, batches, inputs, device, passes: int = 2) -> float:
    """Return sketches per second of forward + backward + an Adam step over ``batches``: the last of
    ``passes`` timed passes (a first pass warms up)."""
    optimizer = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
    labels = [torch.randint(0, 345, (len(b),), device=device) for b in batches]
    prepared = [inputs(b) for b in batches]
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(1 + passes):
        synchronize()
        start = time.perf_counter()
        for (x, lengths), y in zip(prepared, labels, strict=True):
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            output, _ = rnn(packed)
            padded, _ = torch.nn.utils.rnn.pad_packed_sequence(output, batch_first=True)
            pooled = padded.sum(1) / lengths[:, None]  # mean over the real steps
            loss = torch.nn.functional.cross_entropy(head(pooled), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        synchronize()
        seconds = time.perf_counter() - start
    return sum(len(b) for b in batches) / seconds


def print_rows(result: dict) -> None:
    """Print the run's facts, then one aligned table row per recurrent layer."""
    print("  ".join(f"{k}: {v}" for k, v in result.items() if k != "rows"))
    rows = [{k: f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in row.items()} for row in result["rows"]]
    keys = list(rows[0])
    widths = [max(len(k), *(len(r[k]) for r in rows)) for k in keys]
    for line in (dict(zip(keys, keys, strict=True)), *rows):
        print("  ".join(line[k].ljust(w) for k, w in zip(keys, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("export", help="make and check the real batches (needs TensorFlow and ../shared)")
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--max-len", type=int, default=1000)
    make.add_argument("--epochs", type=int, default=3)
    make.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "quickdraw.yaml"))
    run = commands.add_parser("check", help="run the batches through cuDNN (needs PyTorch and a GPU)")
    run.add_argument("folder", type=Path)
    run.add_argument("--json", type=Path, default=RESULTS / "cudnn_check.json")
    run.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of the script")
    args = parser.parse_args()
    if args.command == "export":
        if not REAL_SAMPLE.is_dir():
            sys.exit(f"real sample not found at {REAL_SAMPLE}")
        summary = export(args.out, args.max_len, args.epochs, args.config)
        (args.out / "export.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    else:
        print_rows(check(args.folder, args.json, args.device))


if __name__ == "__main__":
    main()
