"""Stage window: input/target windows over the token ids (the book's section 2.6).

The windows are offsets into the token array, never copies: this stage records their geometry and a preview.
"""

from pathlib import Path

from llmpipe.cli import run
from llmpipe.files import output_dir
from llmpipe.formats import load_tokens, write_metrics, write_windows
from llmpipe.params import load_params, positive_int
from llmpipe.tokenizer import load_encoding
from llmpipe.windows import first_windows, inputs_and_targets, num_windows, preview

SCHEMA = {"max_length": positive_int, "stride": positive_int}


def main(tokens_dir: Path, windows_dir: Path) -> None:
    params = load_params("window", SCHEMA)
    tokens, meta = load_tokens(tokens_dir)
    window_rows = first_windows(tokens, params["max_length"], params["stride"])
    inputs, targets = inputs_and_targets(window_rows)
    count = num_windows(len(tokens), params["max_length"], params["stride"])
    geometry = {**params, "num_windows": count, "num_tokens": len(tokens)}
    with output_dir(windows_dir) as tmp:
        write_windows(tmp, geometry, preview(window_rows, params["stride"], load_encoding(meta["encoding"])))
    metrics = {**geometry, "first_input": inputs[0].tolist(), "first_target": targets[0].tolist()}
    write_metrics(Path("metrics/window.json"), metrics)


if __name__ == "__main__":
    run(main)
