"""The official `openai` client against a running `rocmforge serve`: list the model, ask once and wait
for the whole answer, then ask again and stream it.

    rocmforge serve smollm2 --port 8080 &
    python examples/openai_client.py [MODEL] [--base-url http://127.0.0.1:8080/v1]

MODEL is the name the server serves (default: smollm2). The key comes from --api-key, else
$ROCMFORGE_API_KEY (the server's --api-key), else a placeholder for a server without one.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(model: str, base_url: str, api_key: str, max_tokens: int) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    print("models:", ", ".join(m.id for m in client.models.list().data))

    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name three colors."}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                           temperature=0)
    choice = reply.choices[0]
    print(f"answer: {choice.message.content.strip()!r} ({choice.finish_reason}, "
          f"{reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} reply tokens)")

    print("streamed: ", end="", flush=True)
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default=os.environ.get("ROCMFORGE_API_KEY") or "no-key")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    try:
        main(args.model, args.base_url, args.api_key, args.max_tokens)
    except Exception as exc:  # the client's errors say what the server answered: one line is enough
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
