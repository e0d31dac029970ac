import spcomp, numpy as np, scipy.sparse as sp
A = sp.random(6, 5, density=0.4, format='csr', random_state=1); A.data -= 0.5
k = spcomp.compile("m[i] = max(j, A[i,j])", formats={"A":"csr"})
print(k.loops)
print(k(A=A)); print(A.toarray().max(axis=1))
k = spcomp.compile("m[i] = min(j, A[i,j]*x[j]) + 1", formats={"A":"csr"})
x = np.arange(5.0)-2
print(k(A=A, x=x)); print((A.toarray()*x).min(axis=1)+1)
k = spcomp.compile("n = max(i, abs(x[i]))"); print(k(x=x))
k = spcomp.compile("n = max(i, max(j, A[i,j]))", formats={"A":"csr"}); print(k(A=A), A.toarray().max())
k = spcomp.compile("n = max(i, x[i])"); print(k(x=np.zeros(0)))
k = spcomp.compile("m[i] = max(j, A[i,j])", formats={"A":"csr"}, backend="cuda-sim"); print(k(A=A))
