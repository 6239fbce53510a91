"""llmpipe: the first step of every language model, from the book "Build a Large Language Model (From Scratch)".

Raw text -> GPT-2 tokens -> sliding windows -> a PyTorch dataset -> embeddings, as a library the pipeline's
stages call and training code imports:

    from llmpipe.data import create_dataloader
"""

__version__ = "0.2.0"
