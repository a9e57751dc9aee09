"""Export: the tuned model as ONNX (and a TensorRT plan on GPU) and a Triton model repository.

Takes: ``train/model`` (with its encoding spec) and ``evaluate/report.json`` (a model that failed the gate stops here).
Gives: ``export/model.onnx``, ``export/parity.json`` and ``triton/`` with its manifest.
Guarantees: the exported graph matches torch within the parity bound on real texts, or the stage fails.
"""
