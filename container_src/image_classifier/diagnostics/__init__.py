"""What a training job records about itself and what judges it: the smdebug hook (debugger_hook.py),
torch.profiler and the system monitor (profiling.py), and our own rules over both, one family a module
(debugger_rules.py over the tensors, profiler_rules.py over the profile). Run by training/; the rules also
run alone (`python -m image_classifier.diagnostics.debugger_rules`) for `launch.py report`. Imports the
ground only.
"""
