import spcomp, numpy as np, scipy.sparse as sp
from spcomp.ir.printer import print_ir
k = spcomp.compile("P[t,d] = H[t,n]*Wd[n,d]; O[t,d] = gelu(P[t,d] + b[d])", formats={"H":"csr"})
print(k.loops); print(k.ir)
