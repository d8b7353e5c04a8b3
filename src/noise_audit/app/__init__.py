"""What the FiftyOne App's plugin shows (``views``: saved views, histograms,
metrics for the panel) and how the plugin is installed (``plugin_install``)."""
