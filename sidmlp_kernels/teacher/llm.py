"""LLM-based generative recommenders: a causal LM with Semantic-ID tokens added to its tokenizer.

MiniOneRec (AkaliKong/MiniOneRec, Qwen2.5) and LC-Rec (zhengbw0324/LC-Rec, LLaMA) name an item by
L added tokens such as ``<a_236><b_231><c_226>``, listed per item in an index file
``{"0": ["<a_236>", "<b_231>", "<c_226>"], ...}`` and added with ``tokenizer.add_tokens(sorted(...))``:
sorted as strings, so a code's token id is not offset + code and is read through the tokenizer
(`convert_tokens_to_ids`). FORMATS.md, "Family 3".

- `SIDIndex` reads an index file. Digit l is the l-th token of every entry (one letter per digit);
  its codes are its distinct numbers in numeric order, so code c is the number c when a digit uses
  every number 0..K_l-1 (the usual case) and the rank of the number otherwise.
- `sid_layout` makes the TokenLayout (kind "tokenizer") from the tokenizer's ids of those tokens,
  `sid_catalog` the catalog (`SIDCatalog.with_shared_sids`: MiniOneRec keeps colliding SIDs).
- `PromptTemplate` is a prompt as the code base writes it: its text parts (each tokenized on its
  own, as the code base does), `{history}` where the history goes (items joined by `history_sep`,
  each as its SID tokens or a given text such as its title), whether BOS leads, and the answer
  suffix (the text between the SID tokens and EOS: MiniOneRec "\\n", LC-Rec none).
  `TEMPLATES["minionerec"]` / `TEMPLATES["lcrec"]` are their sequential-recommendation prompts.
- OpenOneRec (Kuaishou-OneRec/OpenOneRec, Qwen3), read from its sources (FORMATS.md, "Family 3"):
  pretrain/tools/model_converter/expand_qwen3_vocab.py appends `<s_a_0>..<s_a_{K-1}>`, `<s_b_..>`,
  `<s_c_..>`, then `<|sid_begin|>`, `<|sid_end|>` with `add_tokens` in that order (so ids are
  offset + code) and pads the embedding to a multiple of 256; data/onerec_data/sft/video_rec.py
  writes every item as `<|sid_begin|><s_a_c0><s_b_c1><s_c_c2><|sid_end|>`, history items joined by
  nothing, in a Qwen3 chat (system + user message); benchmarks/.../recommendation/config.py appends
  `<|sid_begin|>` to the chat prompt (qwen3_soft_switch.jinja2, enable_thinking False: "/no_think"
  after the user text, an empty think block) and generates max_new_tokens=3 with 16 beams, so an
  answer is its 3 SID tokens, nothing scored after them (`PromptTemplate.answer_eos=False`);
  .../recommendation/utils_by_pid.py reads `sid2pid.json`, keyed by c1*8192^2 + c2*8192 + c3, each
  key a list of {"pid" (or "iid"), "count", "count_after_downsample"}: `SIDIndex.read_sid2pid`.
  `TEMPLATES["openonerec"]` is its video-recommendation prompt (first system / user prompt).
- `llm_teacher(model, tokenizer, index, "minionerec")` ties them together (`LLMTeacher`): left-padded
  prompts, `Examples` for `accelerate()`, and the model marked as a "text"-prompt teacher
  (`config.sid_prompt = "text"`, `config.sid_answer_suffix` = the suffix's token ids; pad / EOS ids
  set on its config as the code base's own evaluation sets them), so `sk.constrained_generate`,
  the adapter and HF-style outputs know where the answer starts and what follows it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ..data.catalog import SIDCatalog
from ..data.examples import Examples
from ..data.layout import TokenLayout
from ..errors import InvalidInput, InvalidInputType
from ..io import ArtifactError

__all__ = ["LLMTeacher", "PromptTemplate", "SIDIndex", "TEMPLATES", "llm_teacher", "sid_catalog", "sid_layout"]

_TOKEN = re.compile(r"^<([A-Za-z]+(?:_[A-Za-z]+)*)_(\d+)>$")  # <a_12> (MiniOneRec, LC-Rec), <s_a_12> (OpenOneRec)
SID2PID_BASE = 8192  # OpenOneRec's sid2pid.json key: c1 * 8192**2 + c2 * 8192 + c3 (utils_by_pid.encode_sid)


def _read_json(path: str | Path, name: str, what: str, parse):
    """parse(blob, source=str(path)) of the JSON file at path; FileNotFoundError when it is missing,
    ArtifactError naming the file when it is not `what`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {name} at {path}")
    try:
        return parse(json.loads(path.read_text()), source=str(path))
    except (json.JSONDecodeError, ValueError) as err:
        raise ArtifactError(path, f"is not {what} ({err})") from err


@dataclass(frozen=True)
class PromptTemplate:
    """A text prompt: parts tokenized one by one (no special tokens) and concatenated, `{history}` in one part.

    bos: prepend the tokenizer's BOS (when it has one); answer_suffix: text after the SID tokens,
    before EOS; answer_eos: whether EOS ends the answer (False: the answer is its SID tokens and
    suffix, nothing scored after them, as OpenOneRec generates 3 tokens); item_format: how a
    history item's SID tokens are written ("{sid}" replaced by them); max_history: keep only the
    last N history items (None: all).
    """

    parts: tuple[str, ...]
    history_sep: str = ", "
    answer_suffix: str = ""
    bos: bool = True
    max_history: Optional[int] = None
    answer_eos: bool = True
    item_format: str = "{sid}"

    def __post_init__(self) -> None:
        parts = (self.parts,) if isinstance(self.parts, str) else tuple(self.parts)
        if not parts or not all(isinstance(p, str) for p in parts):
            raise InvalidInputType(f"PromptTemplate.parts must be strings, got {self.parts!r}")
        if sum(p.count("{history}") for p in parts) != 1:
            raise InvalidInput("a prompt template needs exactly one '{history}' placeholder, got "
                               f"{sum(p.count('{history}') for p in parts)}")
        if self.max_history is not None and (not isinstance(self.max_history, int) or self.max_history < 1):
            raise InvalidInput(f"max_history must be None or an int >= 1, got {self.max_history!r}")
        if not isinstance(self.answer_eos, bool):
            raise InvalidInputType(f"answer_eos must be a bool, got {type(self.answer_eos).__name__}")
        if not isinstance(self.item_format, str) or self.item_format.count("{sid}") != 1:
            raise InvalidInput(f"item_format must be a string with one '{{sid}}', got {self.item_format!r}")
        object.__setattr__(self, "parts", parts)

    def texts(self, history: str) -> list[str]:
        """The template's parts with the history text filled in."""
        return [p.replace("{history}", history) for p in self.parts]


_SEQREC = "The user has interacted with items {history} in chronological order. Can you predict the next possible item " \
          "that the user may expect?"

# MiniOneRec's SID SFT prompt (data.py, SidSFTDataset): an instruction header, then the user input
# and "### Response:\n"; the answer is the SID tokens, "\n", EOS.
# LC-Rec's sft_prompt with sequential-recommendation instruction 0 (prompt.py); the answer is the SID
# tokens, then EOS; the LLaMA tokenizer leads with BOS; 20 history items (its --max_his_len).
TEMPLATES: dict[str, PromptTemplate] = {
    "minionerec": PromptTemplate(
        parts=("Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request. \n\n### Instruction:\nCan you predict the "
               "next possible item that the user may expect?\n\n",
               "### User Input: \n" + _SEQREC + "\n\n### Response:\n"),
        answer_suffix="\n"),
    "lcrec": PromptTemplate(
        parts=("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\n" + _SEQREC + "\n\n### Response:",),
        max_history=20),
    # OpenOneRec's video recommendation (data/onerec_data/sft/video_rec.py, first system and user prompt) in the
    # Qwen3 chat its benchmark renders (qwen3_soft_switch.jinja2, enable_thinking False), then "<|sid_begin|>".
    "openonerec": PromptTemplate(
        parts=("<|im_start|>system\n你是一个智能推荐助手，能够根据用户的浏览历史预测用户可能感兴趣的下一个内容。"
               "<|im_end|>\n<|im_start|>user\n根据以下用户浏览记录，请预测用户接下来可能观看的内容：\n"
               "{history}/no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|sid_begin|>",),
        history_sep="", bos=False, answer_eos=False, item_format="<|sid_begin|>{sid}<|sid_end|>"),
}


@dataclass
class SIDIndex:
    """An index file's items: keys (as written) and each item's L SID token strings."""

    keys: list[str]
    tokens: list[tuple[str, ...]]
    source: str = "index"

    @classmethod
    def read(cls, path: str | Path) -> "SIDIndex":
        """Read `<name>.index.json`; ArtifactError naming the file when it is not an index."""
        return _read_json(path, "SID index file", "a SID index", cls.from_dict)

    @classmethod
    def from_dict(cls, blob: Mapping[str, Sequence[str]], source: str = "index") -> "SIDIndex":
        """From the parsed JSON object {item key: [token, ...]}."""
        if not isinstance(blob, Mapping) or not blob:
            raise InvalidInput(f"{source}: a SID index is a non-empty JSON object of item key -> token list")
        keys, tokens = [], []
        for key, toks in blob.items():
            if isinstance(toks, str) or not isinstance(toks, Sequence) or not all(isinstance(t, str) for t in toks):
                raise InvalidInput(f"{source}: item {key!r} must map to a list of token strings, got {toks!r}")
            keys.append(str(key))
            tokens.append(tuple(toks))
        length = len(tokens[0])
        for key, toks in zip(keys, tokens):
            if len(toks) != length or length == 0:
                raise InvalidInput(f"{source}: item {key!r} has {len(toks)} SID tokens, item {keys[0]!r} has {length}")
            for tok in toks:
                if not _TOKEN.match(tok):
                    raise InvalidInput(f"{source}: item {key!r} token {tok!r} is not of the form <x_N> or <s_x_N>")
        index = cls(keys, tokens, source)
        index.digit_tokens()  # validates one letter per digit
        return index

    @classmethod
    def read_sid2pid(cls, path: str | Path) -> "SIDIndex":
        """Read OpenOneRec's `sid2pid.json` (module docstring); ArtifactError naming the file when it is not one."""
        return _read_json(path, "sid2pid.json", "an OpenOneRec sid2pid.json", cls.from_sid2pid)

    @classmethod
    def from_sid2pid(cls, blob: Mapping[str, Sequence[Mapping]], source: str = "sid2pid") -> "SIDIndex":
        """From sid2pid.json's object {c1*8192^2 + c2*8192 + c3: [{"pid": ...}, ...]}: one entry per item
        (key = its pid or iid), tokens <s_a_c1><s_b_c2><s_c_c3>; items sharing a SID all kept."""
        if not isinstance(blob, Mapping) or not blob:
            raise InvalidInput(f"{source}: sid2pid.json is a non-empty JSON object of SID key -> item list")
        out: dict[str, list[str]] = {}
        for key, items in blob.items():
            if not str(key).isdigit():
                raise InvalidInput(f"{source}: SID key {key!r} is not a non-negative integer")
            code = int(key)
            codes = (code // SID2PID_BASE ** 2, code // SID2PID_BASE % SID2PID_BASE, code % SID2PID_BASE)
            if isinstance(items, (str, Mapping)) or not isinstance(items, Sequence) or not items:
                raise InvalidInput(f"{source}: SID {key} must map to a non-empty list of items, got {items!r}")
            for entry in items:
                pid = entry.get("pid", entry.get("iid")) if isinstance(entry, Mapping) else None
                if isinstance(pid, bool) or not isinstance(pid, int):
                    raise InvalidInput(f"{source}: SID {key} lists {entry!r}, not an item with an int 'pid' or 'iid'")
                if str(pid) in out:
                    raise InvalidInput(f"{source}: item {pid} is listed under two SIDs")
                out[str(pid)] = [f"<s_{letter}_{c}>" for letter, c in zip("abc", codes)]
        return cls.from_dict(out, source=source)

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return len(self.tokens[0])

    def new_tokens(self) -> list[str]:
        """The distinct SID tokens, sorted as strings: what the code bases pass to tokenizer.add_tokens."""
        return sorted({t for toks in self.tokens for t in toks})

    def digit_tokens(self) -> list[list[str]]:
        """Per digit, its token strings in code order (numeric order of the number in the token)."""
        out = []
        for level in range(self.num_levels):
            seen: dict[int, str] = {}
            letters = set()
            for toks in self.tokens:
                letter, number = _TOKEN.match(toks[level]).groups()
                letters.add(letter)
                seen[int(number)] = toks[level]
            if len(letters) != 1:
                raise InvalidInput(f"{self.source}: digit {level} uses several token letters {sorted(letters)}; "
                                   "each digit needs its own <x_N> letter")
            out.append([seen[n] for n in sorted(seen)])
        letters = [_TOKEN.match(row[0]).group(1) for row in out]
        if len(set(letters)) != len(letters):
            raise InvalidInput(f"{self.source}: digits share a token letter ({letters})")
        return out

    def codes(self) -> torch.Tensor:
        """(N, L) codes of the items, in index order."""
        lookup = [{tok: code for code, tok in enumerate(row)} for row in self.digit_tokens()]
        return torch.tensor([[lookup[l][t] for l, t in enumerate(toks)] for toks in self.tokens], dtype=torch.long)

    def item_ids(self) -> torch.Tensor:
        """Item ids: the keys when they are all non-negative integers (MiniOneRec, LC-Rec), else 0..N-1."""
        if all(k.isdigit() for k in self.keys):
            return torch.tensor([int(k) for k in self.keys], dtype=torch.long)
        return torch.arange(len(self.keys))


def sid_catalog(index: SIDIndex) -> SIDCatalog:
    """The catalog of an index: one row per distinct SID, every item kept (SIDCatalog.with_shared_sids)."""
    codes = index.codes()
    sizes = [len(row) for row in index.digit_tokens()]
    return SIDCatalog.with_shared_sids(index.item_ids(), codes, sizes)


def token_id(tokenizer, token: str, what: str = "token") -> int:
    """The tokenizer's id of one token string; ValueError if it is not in the vocabulary."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tokenizer.convert_ids_to_tokens(int(tid)) != token:
        raise InvalidInput(f"the tokenizer has no {what} {token!r}: add the index's SID tokens with "
                           "tokenizer.add_tokens(sorted(tokens)) (as the code base does) before training")
    return int(tid)


def sid_layout(index: SIDIndex, tokenizer, pad_id: Optional[int] = None) -> TokenLayout:
    """The "tokenizer" TokenLayout: each digit's code tokens through convert_tokens_to_ids; EOS the tokenizer's,
    pad `pad_id` (default: the tokenizer's pad, else its EOS)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise InvalidInput("the tokenizer has no eos_token_id (an answer ends with EOS)")
    table = [tuple(token_id(tokenizer, t, "SID token") for t in row) for row in index.digit_tokens()]
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else eos
    return TokenLayout(tuple(len(r) for r in table), kind="tokenizer", token_ids=tuple(table), pad_id=int(pad_id),
                       eos_id=int(eos))


@dataclass
class LLMTeacher:
    """A causal LM with SID tokens, its tokenizer, layout, catalog, prompt template and index."""

    model: nn.Module
    tokenizer: object
    layout: TokenLayout
    catalog: SIDCatalog
    template: PromptTemplate
    index: SIDIndex
    _sid_text: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ids = self.index.item_ids().tolist()
        fmt = self.template.item_format
        self._sid_text = {i: fmt.replace("{sid}", "".join(toks)) for i, toks in zip(ids, self.index.tokens)}

    @property
    def adapter(self):
        """The teacher adapter (adapters.CausalLMTeacherAdapter) of this model and layout."""
        from .adapters import adapter_for

        return adapter_for(self.model, self.layout, self.catalog)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, history: Sequence[int], item_text: Optional[Mapping[int, str]] = None) -> list[int]:
        """Token ids of one user's prompt; history = item ids, oldest first, written as their SID tokens or
        `item_text[item]` (e.g. titles)."""
        items = list(history)
        if not items:
            raise InvalidInput("a history needs at least one item, got none")
        if self.template.max_history:
            items = items[-self.template.max_history:]
        words = []
        for item in items:
            text = (item_text or {}).get(item) if item_text is not None else None
            if text is None:
                if int(item) not in self._sid_text:
                    raise InvalidInput(f"history item {item} is not in the SID index")
                text = self._sid_text[int(item)]
            words.append(text)
        ids = []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.template.bos and bos is not None:
            ids.append(int(bos))
        for part in self.template.texts(self.template.history_sep.join(words)):
            ids += self._ids(part)
        return ids

    def prompts(self, histories: Sequence[Sequence[int]], item_text: Optional[Mapping[int, str]] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (B, T) input_ids and attention_mask of the users' prompts (the layout's pad id)."""
        if len(histories) == 0:
            raise InvalidInput("histories must hold at least one history, got 0")
        rows = [self.prompt_ids(h, item_text) for h in histories]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.layout.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row):] = 1
        return ids, mask

    def answer_ids(self, item: int) -> list[int]:
        """The tokens the model is trained to answer with for `item`: its SID tokens, the suffix, EOS (unless
        the template's answer_eos is False)."""
        digits = self.layout.codes_to_tokens(self.catalog.codes_of([item])[0]).tolist()
        suffix = self._ids(self.template.answer_suffix) if self.template.answer_suffix else []
        return digits + suffix + ([self.layout.eos_id] if self.template.answer_eos else [])

    def examples(self, histories: Sequence[Sequence[int]], targets: Sequence[int],
                 item_text: Optional[Mapping[int, str]] = None) -> Examples:
        """Examples (prompts, left padded; target codes and items) for accelerate() and evaluation."""
        if len(targets) != len(histories):
            raise InvalidInput(f"targets has {len(targets)} entries but histories has {len(histories)}")
        ids, mask = self.prompts(histories, item_text)
        items = torch.as_tensor(list(targets), dtype=torch.long)
        return Examples(ids, mask, self.catalog.codes_of(items), items, padding_side="left")


def llm_teacher(model: nn.Module, tokenizer, index, format: str = "minionerec",
                template: Optional[PromptTemplate | str] = None) -> LLMTeacher:
    """An LLMTeacher for a MiniOneRec / LC-Rec / OpenOneRec model (format), or any causal LM with SID tokens and
    a given template (a PromptTemplate or a string with '{history}', which keeps the format's answer ending and
    item format); `index` is a SIDIndex, its dict or its file (an index file; OpenOneRec: SIDIndex.read_sid2pid)."""
    if format not in TEMPLATES:
        raise InvalidInput(f"format must be one of {sorted(TEMPLATES)}, got {format!r}")
    if getattr(model.config, "is_encoder_decoder", False):
        raise InvalidInput("llm_teacher needs a decoder-only causal LM")
    if isinstance(index, (str, Path)):
        index = SIDIndex.read(index)
    elif isinstance(index, Mapping):
        index = SIDIndex.from_dict(index)
    elif not isinstance(index, SIDIndex):
        raise InvalidInputType(f"index must be a SIDIndex, a dict or an index file path, got {type(index).__name__}")
    if template is None:
        template = TEMPLATES[format]
    elif isinstance(template, str):
        base = TEMPLATES[format]
        template = PromptTemplate((template,), answer_suffix=base.answer_suffix, answer_eos=base.answer_eos,
                                  item_format=base.item_format, bos=base.bos)
    elif not isinstance(template, PromptTemplate):
        raise InvalidInputType(f"template must be a PromptTemplate or a string, got {type(template).__name__}")
    # LC-Rec pads with id 0 when the LLaMA tokenizer has no pad; MiniOneRec pads with EOS.
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = (0 if pad is None else pad) if format == "lcrec" else tokenizer.eos_token_id
    layout = sid_layout(index, tokenizer, pad_id=pad)
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab < layout.vocab_size:
        raise InvalidInput(f"the model has {vocab} token embeddings but the tokenizer's SID tokens reach id "
                           f"{layout.vocab_size - 1}: resize_token_embeddings(len(tokenizer)) before training")
    catalog = sid_catalog(index)
    suffix = list(tokenizer(template.answer_suffix, add_special_tokens=False)["input_ids"]) \
        if template.answer_suffix else []
    cfg = model.config
    cfg.sid_prompt = "text"
    cfg.sid_answer_suffix = suffix
    cfg.sid_answer_eos = template.answer_eos
    cfg.pad_token_id = layout.pad_id
    cfg.eos_token_id = layout.eos_id
    return LLMTeacher(model, tokenizer, layout, catalog, template, index)
