"""kbot's foundation: typed settings, the error tree and the SQL store.

Every other package (``knowledge``, ``agent``, ``finetune``, ``bot``) may import from here;
nothing here imports them.
"""

__version__ = "0.1.0"
