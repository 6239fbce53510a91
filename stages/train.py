"""Stage train: the book's GPT (chapter 4) trained as its chapter 5 trains it, from the embed stage's embeddings.

AdamW on the training split through create_dataloader; evaluation every train.eval_every steps on
train.eval_batches batches of each split, logged with DVCLive (metrics/train/: the summary metrics.json, and
plots/metrics/*.tsv, one history per logged value). At the end, the validation loss of the whole validation split,
its perplexity, and the unigram and bigram baselines counted on the training split (docs/training.md).
Writes data/model/: model.safetensors + config.json (llmpipe.formats.save_model) and the trained embeddings.
"""

from pathlib import Path

from llmpipe.baselines import bigram_cross_entropy, unigram_cross_entropy
from llmpipe.cli import run
from llmpipe.data import create_dataloader
from llmpipe.files import output_dir
from llmpipe.formats import (
    EMBEDDINGS_FILE,
    TRAINED_EMBEDDINGS_FILE,
    load_embeddings,
    save_model,
    save_tensors,
)
from llmpipe.model import config_for, model_from_embeddings, pick_device
from llmpipe.params import (
    boolean,
    fraction,
    load_params,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_int_or_null,
    positive_number,
    text,
)
from llmpipe.training import (
    Progress,
    check_schedule,
    evaluate,
    num_steps,
    perplexity,
    pin_threads,
    seed_everything,
    train,
    validation_loader,
)

LIVE_DIR = Path("metrics/train")


SCHEMA = {
    "n_layers": positive_int,
    "n_heads": positive_int,
    "drop_rate": fraction,
    "qkv_bias": boolean,
    "lr": positive_number,
    "weight_decay": non_negative_number,
    "max_steps": positive_int_or_null,
    "epochs": positive_int_or_null,
    "eval_every": positive_int,
    "eval_batches": positive_int,
    "seed": non_negative_int,
    "device": text,
    "threads": positive_int,
}


def main(dataset_dir: Path, embeddings_dir: Path, model_dir: Path) -> None:
    params = load_params("train", SCHEMA)
    # Everything is checked before anything is written: a bad param keeps the earlier outputs.
    device = pick_device(params["device"])
    train_loader = create_dataloader(dataset_dir, "train", verify=True)  # one read, cheap next to training
    val_loader = validation_loader(dataset_dir)
    max_steps = num_steps(params["max_steps"], params["epochs"], len(train_loader))
    check_schedule(max_steps, params["eval_every"], params["eval_batches"])
    dataset = train_loader.dataset
    initial = load_embeddings(embeddings_dir / EMBEDDINGS_FILE)
    config = config_for(initial, dataset.max_length, dataset.vocab_size, params)
    unigram = unigram_cross_entropy(dataset.tokens, val_loader.dataset.tokens, dataset.vocab_size)
    bigram = bigram_cross_entropy(dataset.tokens, val_loader.dataset.tokens, dataset.vocab_size)

    from dvclive import Live  # imports much of DVC: only once the params are known to be good

    pin_threads(params["threads"])
    seed_everything(params["seed"])
    model = model_from_embeddings(config, initial["token_embedding.weight"], initial["pos_embedding.weight"])
    progress = Progress(max_steps)
    with Live(dir=str(LIVE_DIR), save_dvc_exp=False, dvcyaml=False, report=None) as live:

        def on_eval(record: dict) -> None:
            live.step = record["step"]
            for key in ("train_loss", "val_loss", "tokens_seen", "lr"):
                live.log_metric(key, record[key])
            live.next_step()
            progress.evaluated(record)

        records = train(
            model,
            train_loader,
            val_loader,
            lr=params["lr"],
            weight_decay=params["weight_decay"],
            max_steps=max_steps,
            eval_every=params["eval_every"],
            eval_batches=params["eval_batches"],
            device=device,
            on_eval=on_eval,
            on_step=progress.stepped,
        )
        val_loss = evaluate(model, val_loader, len(val_loader), device)
        final = records[-1]
        live.summary = {
            "step": final["step"],
            "epochs": round(final["tokens_seen"] / (len(dataset) * dataset.max_length), 4),
            "tokens_seen": final["tokens_seen"],
            "lr": final["lr"],
            "train_loss": final["train_loss"],
            "val_loss": val_loss,
            "val_perplexity": perplexity(val_loss),
            "unigram_val_loss": unigram,
            "bigram_val_loss": bigram,
            "initial_val_loss": records[0]["val_loss"],
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "val_tokens": len(val_loader.dataset) * dataset.max_length,
        }
        model.cpu()
        with output_dir(model_dir) as tmp:
            save_model(tmp, model.state_dict(), {**config.__dict__})
            trained = {"token_embedding.weight": model.tok_emb.weight, "pos_embedding.weight": model.pos_emb.weight}
            save_tensors({name: t.detach() for name, t in trained.items()}, tmp / TRAINED_EMBEDDINGS_FILE)
    print(
        f"validation loss {val_loss:.4f} (perplexity {perplexity(val_loss):,.1f}) on {len(val_loader.dataset):,} "
        f"windows; baselines: unigram {unigram:.4f}, bigram {bigram:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    run(main)
