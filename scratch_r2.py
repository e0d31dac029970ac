import spcomp, numpy as np, scipy.sparse as sp
x=np.array([1.,-2,3]); y=np.array([-4.,1,0])
print(spcomp.compile("n = max(i, x[i]) + min(i, y[i])")(x=x,y=y), x.max()+y.min())
print(spcomp.compile("n = sum(i, x[i]) * sum(i, y[i])")(x=x,y=y), x.sum()*y.sum())
A = sp.random(5,4,density=0.5,format='csr',random_state=0)
print(spcomp.compile("m[i] = max(j, A[i,j]) - min(j, A[i,j])", formats={"A":"csr"})(A=A), A.toarray().max(1)-A.toarray().min(1))
try: spcomp.compile("n = max(i, max(i, x[i]))")
except Exception as e: print(type(e).__name__, e)
