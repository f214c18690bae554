"""Feature extraction: image (AlexNet FC7 and the other extractors of ``extractors/``, then PCA), text (sentence
encoder, CLIP text tower, tag vectors, bag of words), assembly."""
