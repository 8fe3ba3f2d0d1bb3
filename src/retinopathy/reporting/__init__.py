"""Reports on trained runs: ``report`` (comparison page: index.html + report.md) and ``figures``."""
