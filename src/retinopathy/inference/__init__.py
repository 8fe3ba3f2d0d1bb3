"""Using a trained grader: ``predict`` (grade photographs, optional Grad-CAM heatmaps), ``explain``
(Grad-CAM on the model that predicted) and ``export`` (ONNX / TorchScript with a preprocessing sidecar)."""
