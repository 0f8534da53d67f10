"""Make docs/cka_heatmap.png (shown in the README): layer-by-layer linear CKA of the residual stream of a small
randomly initialised 8-block residual MLP on 2,000 Gaussian inputs. Run: python docs/make_cka_heatmap.py"""
import torch, fastcka
from fastcka.plot import cka_heatmap
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()) for _ in range(8)])
x = torch.randn(2000, 64)
acts, h = [x], x
with torch.no_grad():
    for blk in model:
        h = h + blk(h)  # residual stream
        acts.append(h)
m = fastcka.cka_matrix(acts)
names = ["input"] + [f"block {i}" for i in range(8)]
cka_heatmap(m, names, title="linear CKA between residual-stream layers (random 8-block MLP, n=2000)", path="docs/cka_heatmap.png")
print(m)
