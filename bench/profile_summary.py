"""`python -m bench.profile_summary FILE`: the hottest functions of a py-spy collapsed-stack profile."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarize(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self%   function"]
    lines += [f"{100 * n / total:5.1f}   {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total%  function"]
    lines += [f"{100 * n / total:5.1f}   {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
