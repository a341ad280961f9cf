#!/usr/bin/env python3
"""A command's output quoted in a docs page: every line it prints must be a line of the page.

Usage: output_in_doc.py DOC COMMAND [ARG...]
"""
import subprocess
import sys


def main():
    doc, command = sys.argv[1], sys.argv[2:]
    lines = set(open(doc).read().splitlines())
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()
    if not out:
        sys.exit("FAIL: the command printed nothing")
    missing = [line for line in out if line not in lines]
    if missing:
        sys.exit(f"FAIL: {doc} lacks {len(missing)} of the {len(out)} lines, first: {missing[0]!r}")
    print(f"{len(out)} lines quoted")


if __name__ == "__main__":
    main()
