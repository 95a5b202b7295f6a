"""Writes the golden tokenizer fixtures that tests/test_tokenizer.py checks ggtune against.

llama.cpp itself (through llama-cpp-python, vocabulary only) tokenizes a varied corpus with the
SmolLM2-135M-Instruct GGUF, with and without add_special (BOS/EOS) and parse_special, and
detokenizes the ids again; it also tokenizes the whole GPL-3 text.

    python scripts/make_tokenizer_fixtures.py [--model PATH] [--out tests/fixtures/tokenizer]

It also writes two vocabulary-only GGUFs for llama.cpp to load: a small SentencePiece ("llama")
vocabulary defined here, and SmolLM2's BPE vocabulary under the llama3, gpt-2 and default
pre-tokenizers.

Outputs (JSON; detokenized bytes as text, or as hex under a "_hex" key when not UTF-8):
    smollm2_cases.json      tokenize cases, detokenize cases, token pieces
    smollm2_gpl3.json       ids of /usr/share/common-licenses/GPL-3 (zlib-compressed little-endian
                            uint32, base64) with the text's sha256
    spm_cases.json          the SentencePiece vocabulary's metadata and its tokenize cases
    smollm2_other_pre.json  ids of the corpus under the other pre-tokenizers
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

GPL3 = Path("/usr/share/common-licenses/GPL-3")

CORPUS = [
    # English prose and punctuation (clean-up of " ," " ." in detokenize)
    "The quick brown fox jumps over the lazy dog. It wasn't the first time, and it won't be the last!",
    "Hello , world . Is it ? Yes ! She said ' hi ' and it 's fine , we 're sure , they 've gone , I 'm here .",
    "I'm, you're, it's, DON'T, We'LL, they've, I'd, o'clock, rock'n'roll",
    # code
    'def f(x: int) -> int:\n    """Square."""\n    return x**2  # ok\n\n\nprint(f(3))\n',
    "int main(void) {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n",
    '{"key": [1, 2.5, -3e10, null, true], "nested": {"a": "b"}}',
    "x+=1;y-=2;z*=3;a/=4;b%=5;c&&d||e!f<>g<=h>=i==j!=k^l~m|n`o`$p@q#r",
    # numbers
    "1234567 3.14159 2024-11-22 1,000,000 0x1F -42 +7 1e-9 007",
    "fullwidth ０１２３４５ arabic-indic ٠١٢٣٤٥ roman Ⅻ fraction ½ superscript ²³",
    # whitespace runs
    "a  b   c    d",
    "\t\t\tindent\ttab",
    "line1\n\nline3\n\n\n\nline7",
    " \n \n\t \n",
    "trailing   ",
    "   leading",
    "crlf\r\nnext\r\n\r\n",
    "nbsp\u00a0x em\u2003space ideographic\u3000space nel\x85x",
    # accents and combining marks
    "café naïve résumé Ångström Ærø Øre straße ÀÉÎÕÜ",
    "e\u0301 a\u0308 n\u0303 combining",
    # emoji
    "😀 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ 🤖🤖🤖",
    # other scripts
    "日本語のテキストです。中文字符。한국어 텍스트.",
    "مرحبا بالعالم! كيف حالك؟",
    "שלום עולם, नमस्ते दुनिया, สวัสดีชาวโลก, Привет мир, Γειά σου Κόσμε",
    # control and odd characters
    "nul\x00soh\x01del\x7f zero\u200bwidth bom\ufeffmark",
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ================================",
    # special-token text
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text<|im_end|>",
    "<|im_start|><|im_end|><|im_start|>",
    "<|im_start <|im_end| |im_start|>",
    "<repo_name>my/repo<reponame>x<file_sep><filename>a.py<gh_stars>10",
    " <|im_start|> spaced <|im_end|> ",
    # empty and near-empty
    "",
    " ",
    "  ",
    "\n",
    " Hello",
    "Hello",
]


def load_vocab(model_path: str):
    llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    return llm, llama_cpp.llama_model_get_vocab(llm.model)


def detokenize(vocab, ids: list[int], special: bool) -> bytes:
    """llama.cpp's llama_detokenize(remove_special=False, unparse_special=special)."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 256 + 64 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, special)
    assert n >= 0, "detokenize buffer too small"
    return buf.raw[:n]


def token_to_piece(vocab, token: int, special: bool) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    assert n >= 0
    return buf.raw[:n]


def as_text_or_hex(key: str, data: bytes) -> dict:
    """{key: text} when ``data`` is valid UTF-8, else {key + "_hex": its hex}."""
    try:
        return {key: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {key + "_hex": data.hex()}


def dump_one_item_per_line(document: dict) -> str:
    """JSON with each list item on its own line: small, and readable in a diff."""
    lines = []
    for key, value in document.items():
        if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
            items = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in value)
            lines.append(f"{json.dumps(key)}: [\n{items}\n]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def tokenize_cases(llm, vocab, texts: list[str], add_specials=(False, True)) -> list[dict]:
    """Every text with each ``add_specials`` value, with and without parse_special, and the ids
    detokenized."""
    cases = []
    for text in texts:
        for add_special in add_specials:
            for special in (False, True):
                ids = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=special)
                cases.append({
                    "text": text, "add_bos": add_special, "special": special, "ids": ids,
                    **as_text_or_hex("detokenized", detokenize(vocab, ids, False)),
                    **as_text_or_hex("detokenized_special", detokenize(vocab, ids, True)),
                })  # fmt: skip
    return cases


def vocab_facts(vocab) -> dict:
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    return {
        "bos_id": llama_cpp.llama_vocab_bos(vocab),
        "eos_id": llama_cpp.llama_vocab_eos(vocab),
        "eot_id": llama_cpp.llama_vocab_eot(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "control_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_control(vocab, t)],
    }


def smollm2_cases(model_path: str) -> dict:
    llm, vocab = load_vocab(model_path)
    # id lists that cut a character's bytes apart, or hold control tokens in the middle
    emoji = llm.tokenize("😀🤖".encode(), add_bos=False, special=False)
    id_lists = [emoji[:-1], emoji[1:], [1, 19556, 2, 0, 905, 4], [0], []]
    detokenize_cases = [
        {"ids": ids, "special": special, **as_text_or_hex("detokenized", detokenize(vocab, ids, special))}
        for ids in id_lists
        for special in (False, True)
    ]
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    rng = np.random.default_rng(0)
    sample = sorted({*range(40), *range(n_vocab - 20, n_vocab), *rng.integers(0, n_vocab, 200).tolist()})
    return {
        "model": Path(model_path).name,
        "llama_cpp_python": llama_cpp.__version__,
        **vocab_facts(vocab),
        "tokenize": tokenize_cases(llm, vocab, CORPUS),
        "detokenize": detokenize_cases,
        # [id, piece without special, piece with special]
        "pieces": [[t, token_to_piece(vocab, t, False).hex(), token_to_piece(vocab, t, True).hex()] for t in sample],
    }


def gpl3_ids(model_path: str) -> dict:
    llm, _ = load_vocab(model_path)
    text = GPL3.read_text(encoding="utf-8")
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    return {
        "model": Path(model_path).name,
        "llama_cpp_python": llama_cpp.__version__,
        "text": str(GPL3),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "add_bos": False,
        "special": False,
        "n_tokens": len(ids),
        "ids_zlib_u4le_base64": base64.b64encode(zlib.compress(np.asarray(ids, "<u4").tobytes(), 9)).decode("ascii"),
    }


def write_vocab_only_gguf(path: Path, meta: dict) -> None:
    """A GGUF that llama.cpp opens with vocab_only: a tiny llama header and the tokenizer keys."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    setters = {
        "tokenizer.ggml.model": writer.add_tokenizer_model,
        "tokenizer.ggml.pre": writer.add_tokenizer_pre,
        "tokenizer.ggml.tokens": writer.add_token_list,
        "tokenizer.ggml.scores": writer.add_token_scores,
        "tokenizer.ggml.token_type": writer.add_token_types,
        "tokenizer.ggml.merges": writer.add_token_merges,
        "tokenizer.ggml.bos_token_id": writer.add_bos_token_id,
        "tokenizer.ggml.eos_token_id": writer.add_eos_token_id,
    }
    for key, value in meta.items():
        setters[key](value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sentencepiece_vocabulary() -> dict:
    """A small "llama" (SentencePiece) vocabulary: <unk> <s> </s>, the 256 byte tokens, every
    substring (up to 6 characters) of a few words with seeded random scores, a user-defined
    "<tool>" and a control-looking "<|im_end|>" typed normal."""
    words = ["▁hello", "▁world", "▁the", "▁quick", "▁brown", "▁fox", "▁tokenizer", "ing", "▁▁▁▁", "▁1234"]
    pieces = sorted({w[i:j] for w in words for i in range(len(w)) for j in range(i + 1, min(len(w), i + 6) + 1)})
    pieces += [c for c in "abcdefghijklmnopqrstuvwxyz.,!?'" if c not in pieces]
    scores = np.round(np.random.default_rng(0).uniform(-12.0, -1.0, len(pieces)), 3).tolist()
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces, "<tool>", "<|im_end|>"]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + scores + [0.0, 0.0],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4, 1],
    }


SPM_EXTRA_TEXTS = [
    "hello world the quick brown fox",
    "<s>hello</s> <tool>tokenizing<|im_end|>",
    "    four  spaces   then one",
    "Hello, World! It's the tokenizer's 1234th run.",
]


def sentencepiece_cases(workdir: Path) -> dict:
    meta = sentencepiece_vocabulary()
    path = workdir / "spm-vocab.gguf"
    write_vocab_only_gguf(path, meta)
    llm, vocab = load_vocab(str(path))
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "metadata": meta,
        **vocab_facts(vocab),
        "tokenize": tokenize_cases(llm, vocab, SPM_EXTRA_TEXTS) + tokenize_cases(llm, vocab, CORPUS, (True,)),
    }


def other_pre_tokenizer_ids(model_path: str, workdir: Path) -> dict:
    """SmolLM2's vocabulary and merges under other pre-tokenizers (tokenizer.ggml.pre replaced,
    add_bos_token removed so that each pre-tokenizer's own default applies)."""
    reader = gguf.GGUFReader(model_path)
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")  # fmt: skip
    meta = {k: reader.fields[k].contents() for k in keys}
    texts = [t for t in CORPUS if "<" not in t]  # special-token handling is covered above
    ids = {}
    for pre in ("llama3", "gpt-2", "default"):
        path = workdir / f"smollm2-{pre}.gguf"
        write_vocab_only_gguf(path, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, **meta})
        llm, _ = load_vocab(str(path))
        ids[pre] = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in texts]
    return {"llama_cpp_python": llama_cpp.__version__, "add_bos": True, "special": False, "texts": texts, "ids": ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.expanduser("~/.cache/ggtune/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/tokenizer"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    (out / "smollm2_cases.json").write_text(dump_one_item_per_line(smollm2_cases(args.model)), encoding="utf-8")
    (out / "smollm2_gpl3.json").write_text(json.dumps(gpl3_ids(args.model), indent=1) + "\n", encoding="utf-8")
    with tempfile.TemporaryDirectory() as workdir:
        spm = sentencepiece_cases(Path(workdir))
        others = other_pre_tokenizer_ids(args.model, Path(workdir))
    (out / "spm_cases.json").write_text(dump_one_item_per_line(spm), encoding="utf-8")
    (out / "smollm2_other_pre.json").write_text(json.dumps(others, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in ("smollm2_cases.json", "smollm2_gpl3.json", "spm_cases.json", "smollm2_other_pre.json"):
        print(f"wrote {out / name} ({(out / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
