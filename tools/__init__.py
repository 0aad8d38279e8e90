"""Development tools run from the repository (make screenshots, the browser tests); not shipped."""
