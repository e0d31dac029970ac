import numpy as np
import scipy.sparse as sp
import spcomp

k = spcomp.compile("""
n = sum(i, abs(x[i]))
y[i] = x[i] / n
m = max(i, y[i])
""", outputs=["n", "m"])
print(k(x=np.array([1.0, -3.0, 4.0])))
print(k.temporaries, k.launches)

A = sp.random(1000, 1000, density=0.01, format="csr", random_state=0)
B = sp.random(1000, 1000, density=0.01, format="csr", random_state=1)
c = np.ones(1000)
k = spcomp.compile("t[j] = B[j,k] * c[k]; y[i] = A[i,j] * t[j]", formats={"A": "csr", "B": "csr"})
print(np.allclose(k(A=A, B=B, c=c), A @ (B @ c)))
print(k.loops)
