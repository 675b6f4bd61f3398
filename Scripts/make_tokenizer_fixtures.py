#!/usr/bin/env python3
"""Makes the tokenizer and chat-template fixtures under Tests/Fixtures/tokenizer.

- Configs/tokenizer/qwen3/tokenizer.json: the Qwen3 tokenizer from ../shared, re-serialised
  compactly (merges as "a b" strings) so it stays under 5 MB; the script checks it encodes exactly
  as the original. Configs/tokenizer/qwen3/tokenizer_config.json is copied as is. (The demo's
  models use this tokenizer too.)
- expected.jsonl: {"text", "ids"} for every HumanEval prompt, canonical solution and test, and
  for stress strings (scripts, emoji, combining marks, CRLF, whitespace runs, contractions, code),
  ids from the Hugging Face `tokenizers` library.
- chat.jsonl: {"messages", "add_generation_prompt", "enable_thinking", "text"} rendered by
  transformers' apply_chat_template with the Qwen3 template.

    pip install tokenizers transformers
    python3 Scripts/make_tokenizer_fixtures.py
"""
import gzip
import json
import os
import shutil

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")
OUT = os.path.join(HERE, "..", "Tests", "Fixtures", "tokenizer")
TOKENIZER = os.path.join(HERE, "..", "Configs", "tokenizer", "qwen3")

STRESS = [
    "",
    "Hello, world!",
    "中文分词测试：机器学习很有趣。",
    "日本語のテキストです。カタカナとひらがな、漢字。",
    "한국어 텍스트 처리 테스트입니다.",
    "مرحبا بالعالم، هذا اختبار للنص العربي.",
    "नमस्ते दुनिया, यह हिंदी पाठ है।",
    "สวัสดีชาวโลก นี่คือการทดสอบภาษาไทย",
    "Emoji: 👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇯🇵🇫🇷 flags, 👍🏽 tone, ❤️ heart",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 \u212b A\u030a \u1e9b\u0323 q\u0307\u0323",
    "Hangul jamo: \u1100\u1161\u11a8 decomposed",
    "CRLF line\r\nnext line\r\n\r\nlast\rcarriage",
    "runs    of     spaces\n\n\n\nand\t\ttabs \t \n  \n",
    "   leading and trailing   ",
    "\n\n\n",
    " ",
    "\t",
    "I'm sure you're right, they've said we'll go and I'd've known. DON'T SHOUT'S 'll",
    "'s 'S 'T 're 'RE 've 'M 'LL 'D ' s 'x",
    "Numbers: 1234567890 3.14159 1,000,000 ①②③ ½ ¼ ٣٤٥ ४५६",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; } // C++ -> ok?",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nhey<|im_end|>",
    "special<|endoftext|>glued<|im_end|><|im_end|>and <tool_call> with </think>",
    "partial <|im_start and <|im_end|| not special",
    "Mixed scripts: Привет мир, Γειά σου κόσμε, שלום עולם, Ελληνικά",
    "Zero\u200bwidth\u200djoiner\u200c and \u00a0nbsp \u3000 ideographic space \u2028 line sep",
    "Symbols: ©®™ ∑∫∂ √∞ ≠≤≥ ←→↑↓ ♠♣♥♦ €£¥ °±× ÷",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.io",
    "ſ long s 'ſ and Kelvin \u212a",
    "😀" * 20 + " " + "a" * 300,
    "===" * 50 + "\n" + "-" * 120,
    "\x00\x01\x7f control \x1b[31mred\x1b[0m",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 and 🜁🝳 astral",
]


def humaneval_texts():
    texts = []
    with gzip.open(os.path.join(SHARED, "datasets", "HumanEval.jsonl.gz"), "rt") as f:
        for line in f:
            record = json.loads(line)
            texts += [record["prompt"], record["canonical_solution"], record["test"]]
    return texts


CHATS = [
    dict(messages=[{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True),
    dict(messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
         add_generation_prompt=True, enable_thinking=False),
    dict(messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True, enable_thinking=True),
    dict(messages=[{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "Leaves fall."}]),
    dict(messages=[{"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "A", "reasoning_content": "\nthink hard\n"}]),
    dict(messages=[{"role": "user", "content": "Q1"},
                   {"role": "assistant", "content": "A1", "reasoning_content": "r1"},
                   {"role": "user", "content": "Q2"},
                   {"role": "assistant", "content": "A2", "reasoning_content": "r2"}]),
    dict(messages=[{"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "<think>\nsteps\n</think>\n\nanswer"}]),
    dict(messages=[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>x</think>A1"},
                   {"role": "user", "content": "Q2"}], add_generation_prompt=True, enable_thinking=False),
    dict(messages=[{"role": "system", "content": "S1"}, {"role": "user", "content": "U"},
                   {"role": "system", "content": "S2"}, {"role": "assistant", "content": "A"}]),
    dict(messages=[{"role": "user", "content": "weather?"},
                   {"role": "assistant", "content": "",
                    "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                      "arguments": "{\"city\": \"Paris\"}"}}]},
                   {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "22C"},
                   {"role": "assistant", "content": "Sunny, 22C."}]),
    dict(messages=[{"role": "user", "content": "call two"},
                   {"role": "assistant", "content": "Sure.",
                    "tool_calls": [{"name": "a", "arguments": "{}"}, {"name": "b", "arguments": "[1]"}]}],
         add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]),
    dict(messages=[{"role": "user", "content": "中文？👍"}, {"role": "assistant", "content": "\n\n好的\n"}]),
    dict(messages=[{"role": "user", "content": "<tool_response>x</tool_response>"},
                   {"role": "assistant", "content": "A", "reasoning_content": "r"}]),
]


def main():
    source = os.path.join(SHARED, "tokenizers", "qwen3")
    target = TOKENIZER
    for directory in (OUT, target):
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.makedirs(directory)
    with open(os.path.join(source, "tokenizer.json")) as f:
        data = json.load(f)
    data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    with open(os.path.join(target, "tokenizer.json"), "w") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    shutil.copy(os.path.join(source, "tokenizer_config.json"), target)

    original = Tokenizer.from_file(os.path.join(source, "tokenizer.json"))
    compact = Tokenizer.from_file(os.path.join(target, "tokenizer.json"))
    texts = humaneval_texts() + STRESS
    tokens = 0
    with open(os.path.join(OUT, "expected.jsonl"), "w") as f:
        for text in texts:
            ids = original.encode(text, add_special_tokens=False).ids
            assert compact.encode(text, add_special_tokens=False).ids == ids, text
            tokens += len(ids)
            f.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")
    print(f"expected.jsonl: {len(texts)} texts, {tokens} tokens")

    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(source)
    with open(os.path.join(OUT, "chat.jsonl"), "w") as f:
        for case in CHATS:
            options = {k: v for k, v in case.items() if k != "messages"}
            text = tokenizer.apply_chat_template(case["messages"], tokenize=False, **options)
            f.write(json.dumps(dict(case, text=text), ensure_ascii=False) + "\n")
    print(f"chat.jsonl: {len(CHATS)} conversations")


if __name__ == "__main__":
    main()
