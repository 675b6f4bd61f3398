#!/usr/bin/env python3
"""Makes Tests/Fixtures/bf16/rounding.safetensors: f32 values and torch's `.to(torch.bfloat16)` of
them, for kd's f32 → bf16 narrowing (`teacher.dtype: bf16`, `kd init --dtype bf16`).

The values cover what rounding can get wrong: exact halfway cases (ties to even, both ways),
values just either side of a tie, the largest finite floats (rounding up to infinity), subnormals,
signed zeros, infinities and NaN, then random f32 bit patterns of every exponent.

    python3 Scripts/make_bf16_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "bf16")


def main():
    generator = torch.Generator().manual_seed(0)
    bits = []
    for high in [0x3F80, 0x3F81, 0x4049, 0x0000, 0x0001, 0x007F, 0x0080, 0x7F7F, 0x7F7E, 0xBF80, 0xBF81, 0xFF7F]:
        for low in [0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF]:
            bits.append((high << 16) | low)
    bits += [0x8000_0000, 0x7F80_0000, 0xFF80_0000]  # -0, +inf, -inf
    random = torch.randint(0, 1 << 32, (4096,), generator=generator, dtype=torch.int64)
    # NaN payloads compare by being NaN (torch and kd may keep different payload bits).
    bits += [b for b in random.tolist() if (b & 0x7F80_0000) != 0x7F80_0000 or (b & 0x007F_FFFF) == 0]
    as_int32 = torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits], dtype=torch.int32)
    values = as_int32.view(torch.float32)
    nan = torch.tensor([float("nan"), -float("nan")], dtype=torch.float32)
    os.makedirs(OUT, exist_ok=True)
    save_file({"f32": values.contiguous(), "bf16": values.to(torch.bfloat16).contiguous(),
               "nan_f32": nan, "nan_bf16": nan.to(torch.bfloat16)},
              os.path.join(OUT, "rounding.safetensors"))
    print(f"{len(bits)} values")


if __name__ == "__main__":
    main()
