"""The application: run directories, the web view — built on the framework, never imported by it."""
