import spcomp, numpy as np, scipy.sparse as sp
N=3000
A = sp.random(N, N, density=10/N, format='csr', random_state=1)
B = sp.random(N, N, density=10/N, format='csr', random_state=2)
c = np.random.rand(N)
k = spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A":"csr","B":"csr"})
print(k.loops)
import time
y = k(A=A,B=B,c=c); print(np.abs(y-A@(B@c)).max())
print(k.loops)
print(k.contraction.plan(dict(A=A,B=B,c=c)))
t=time.perf_counter(); [k(A=A,B=B,c=c) for _ in range(20)]; print((time.perf_counter()-t)/20)
k2 = spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A":"csr","B":"csr"}, schedule=spcomp.Schedule().factorize(False))
k2(A=A,B=B,c=c)
t=time.perf_counter(); [k2(A=A,B=B,c=c) for _ in range(20)]; print((time.perf_counter()-t)/20)
k3 = spcomp.compile("y[i] = A[i,j]*B[j,k]*c[k]", formats={"A":"csr","B":"csr"}, schedule=spcomp.Schedule().factorize(("A","B")))
print(np.abs(k3(A=A,B=B,c=c)-y).max()); print(k3.loops)
