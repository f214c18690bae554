"""Reports: the paper's tables as Markdown, and plots."""
