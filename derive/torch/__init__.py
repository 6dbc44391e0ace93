"""derive.torch: every cell as a differentiable PyTorch operator, and modules built on them.

    import derive.torch as dt
    dt.LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
            dropout=0.0, bidirectional=False)      # drop-in for nn.LSTM (cell lstm_np)
    dt.GRU(...), dt.RNN(...)                       # drop-ins for nn.GRU (gru), nn.RNN (rnn)
    dt.Recurrent(cell, input_size, hidden_size, ...)   # any cell, its own parameter names
    dt.Recurrent("lstmp", M, N, proj_size=P)       # a cell with a second node size P
    dt.operators(cell)                             # the cell's custom operators (ops.py)

An optional extra (`pip install "derive[torch]"`): `import derive` never imports torch.
"""

from derive.torch.modules import GRU, LSTM, RNN, Recurrent
from derive.torch.ops import CellOperators, operators

__all__ = ["CellOperators", "GRU", "LSTM", "RNN", "Recurrent", "operators"]
