"""
Put freshly recorded output into the console blocks of a page:

    PATH=.venv/bin:$PATH bash docs/walkthrough/record.sh > /tmp/transcript.txt
    python3 docs/walkthrough/sync.py docs/tutorial.rst /tmp/transcript.txt

Each command of a console block is matched, in order, with the same command
in the transcript, and its output lines are replaced by the recorded ones.
Commands the transcript does not have (installation, for example) are left
as they are.
"""
import sys

rst_path, transcript_path = sys.argv[1], sys.argv[2]

entries = []
for line in open(transcript_path).read().splitlines():
    if line.startswith("#####"):
        continue
    if line.startswith("$ "):
        entries.append([line[2:], []])
    elif entries:
        entries[-1][1].append(line)

lines = open(rst_path).read().splitlines()
out = []
i = 0
pointer = 0
replaced = 0
while i < len(lines):
    line = lines[i]
    out.append(line)
    i += 1
    if line.strip() != ".. code-block:: console":
        continue
    # copy blank line(s) after the directive
    while i < len(lines) and lines[i].strip() == "":
        out.append(lines[i])
        i += 1
    # gather block
    block = []
    while i < len(lines) and (lines[i].strip() == "" or lines[i].startswith("   ")):
        block.append(lines[i])
        i += 1
    trailing = []
    while block and block[-1].strip() == "":
        trailing.insert(0, block.pop())
    # split into commands
    newblock = []
    j = 0
    while j < len(block):
        b = block[j]
        if b.startswith("   $ "):
            cmd = b[5:]
            outputs = []
            j += 1
            while j < len(block) and not block[j].startswith("   $ "):
                outputs.append(block[j])
                j += 1
            found = None
            for k in range(pointer, len(entries)):
                if entries[k][0] == cmd:
                    found = k
                    break
            newblock.append(b)
            if found is None:
                newblock.extend(outputs)
            else:
                pointer = found + 1
                newblock.extend(("   " + o) if o else "" for o in entries[found][1])
                replaced += 1
        else:
            newblock.append(b)
            j += 1
    out.extend(newblock)
    out.extend(trailing)
open(rst_path, "w").write("\n".join(out) + "\n")
print("replaced", replaced, "of", len(entries))
