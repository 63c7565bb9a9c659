"""The window's dialogs: export (adapter or merged model, with its check) and the rank study.

A dialog uses ``widgets`` and ``state``, never a panel.
"""
