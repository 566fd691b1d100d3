#!/usr/bin/env bash
# The main job: a one-command demo on the built-in plant simulator. Coming with the demo issue.
echo "The one-command demo (simulate -> train -> export -> install -> run -> summary) is coming; see README." >&2
exit 1
