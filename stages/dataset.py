"""Stage dataset: the windows as a PyTorch Dataset and DataLoader (the book's sections 2.6 and 5.1).

The tokens are split by position as the book's chapter 5 splits its text, and DATASET_DIR is written
self-contained (train.bin, val.bin, dataset.json), so training code needs nothing else:
    from llmpipe.data import create_dataloader; loader = create_dataloader("data/dataset")
"""

from pathlib import Path

from llmpipe.cli import run
from llmpipe.data import create_dataloader
from llmpipe.errors import PipelineError
from llmpipe.files import output_dir
from llmpipe.formats import load_tokens, read_windows, write_dataset, write_metrics
from llmpipe.params import boolean, fraction, load_params, non_negative_int, positive_int
from llmpipe.windows import plan_splits

SCHEMA = {"batch_size": positive_int, "shuffle": boolean, "seed": non_negative_int, "val_fraction": fraction}


def main(tokens_dir: Path, windows_dir: Path, dataset_dir: Path) -> None:
    params = load_params("dataset", SCHEMA)
    geometry = read_windows(windows_dir)
    tokens, meta = load_tokens(tokens_dir, verify=True)  # cheap next to copying every id
    if geometry["num_tokens"] != len(tokens):
        raise PipelineError(f"{windows_dir} was built from other tokens than {tokens_dir}: run `dvc repro`")
    max_length, stride = geometry["max_length"], geometry["stride"]
    splits = plan_splits(len(tokens), max_length, stride, params["batch_size"], params["val_fraction"])
    encoding = {key: meta[key] for key in ("dtype", "encoding", "vocab_size")}
    with output_dir(dataset_dir) as tmp:
        config = write_dataset(tmp, tokens, splits, {**encoding, "max_length": max_length, "stride": stride, **params})
        loader = create_dataloader(tmp)
        inputs, targets = next(iter(loader))
    metrics = {"num_windows": config["splits"]["train"]["num_windows"], "num_batches": len(loader)}
    shapes = {"batch_input_shape": list(inputs.shape), "batch_target_shape": list(targets.shape)}
    write_metrics(Path("metrics/dataset.json"), {**metrics, **shapes, "val_num_windows": splits["val"]["num_windows"]})


if __name__ == "__main__":
    run(main)
