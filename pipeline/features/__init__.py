"""Feature extraction: image (AlexNet FC7 + PCA), text (sentence encoder or tag vectors), assembly."""
