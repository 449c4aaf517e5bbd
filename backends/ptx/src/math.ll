; mixc's f32 math library, linked into every kernel module (then made internal and inlined).
; Pure LLVM IR (no target intrinsics), so that the host can run and test it.
; A constant written F, open paren, decimal, close paren is an f32; `math.rs` rewrites it to LLVM hex.
; Algorithms: Cephes-style range reduction and minimax polynomials (about 1-2 ulp
; in the ranges mixers use; sin/cos reduce exactly for |x| up to about 1e5).

declare float @llvm.fma.f32(float, float, float)
declare float @llvm.rint.f32(float)
declare float @llvm.fabs.f32(float)
declare float @llvm.minnum.f32(float, float)
declare float @llvm.maxnum.f32(float, float)
declare float @llvm.copysign.f32(float, float)
declare i32 @llvm.fptosi.sat.i32.f32(float)

define float @mixc_exp(float %x) #0 {
  %t = fmul float %x, F(1.44269504088896341)
  %j0 = call float @llvm.rint.f32(float %t)
  %j1 = call float @llvm.maxnum.f32(float %j0, float F(-252.0))
  %j = call float @llvm.minnum.f32(float %j1, float F(254.0))
  %nj = fneg float %j
  %f1 = call float @llvm.fma.f32(float %nj, float F(0.693359375), float %x)
  %f = call float @llvm.fma.f32(float %nj, float F(-2.12194440e-4), float %f1)
  %p0 = call float @llvm.fma.f32(float F(1.9875691500E-4), float %f, float F(1.3981999507E-3))
  %p1 = call float @llvm.fma.f32(float %p0, float %f, float F(8.3334519073E-3))
  %p2 = call float @llvm.fma.f32(float %p1, float %f, float F(4.1665795894E-2))
  %p3 = call float @llvm.fma.f32(float %p2, float %f, float F(1.6666665459E-1))
  %p4 = call float @llvm.fma.f32(float %p3, float %f, float F(5.0000001201E-1))
  %z = fmul float %f, %f
  %q = call float @llvm.fma.f32(float %p4, float %z, float %f)
  %r = fadd float %q, F(1.0)
  %ji = call i32 @llvm.fptosi.sat.i32.f32(float %j)
  %ja = ashr i32 %ji, 1
  %jb = sub i32 %ji, %ja
  %ea = add i32 %ja, 127
  %eb = add i32 %jb, 127
  %sa = shl i32 %ea, 23
  %sb = shl i32 %eb, 23
  %fa = bitcast i32 %sa to float
  %fb = bitcast i32 %sb to float
  %r1 = fmul float %r, %fa
  %r2 = fmul float %r1, %fb
  %big = fcmp ogt float %x, F(89.0)
  %r3 = select i1 %big, float 0x7FF0000000000000, float %r2
  %small = fcmp olt float %x, F(-104.0)
  %r4 = select i1 %small, float F(0.0), float %r3
  ret float %r4
}

define float @mixc_log(float %x) #0 {
  %den = fcmp olt float %x, F(1.17549435e-38)
  %xs0 = fmul float %x, F(8388608.0)
  %xs = select i1 %den, float %xs0, float %x
  %adj = select i1 %den, i32 -23, i32 0
  %bits = bitcast float %xs to i32
  %ex0 = lshr i32 %bits, 23
  %ex1 = and i32 %ex0, 255
  %ex2 = sub i32 %ex1, 126
  %ex3 = add i32 %ex2, %adj
  %mb0 = and i32 %bits, 8388607
  %mb = or i32 %mb0, 1056964608
  %m = bitcast i32 %mb to float
  %lt = fcmp olt float %m, F(0.707106781186547524)
  %ex4 = sub i32 %ex3, 1
  %e = select i1 %lt, i32 %ex4, i32 %ex3
  %m2 = fadd float %m, %m
  %fa = fsub float %m2, F(1.0)
  %fb = fsub float %m, F(1.0)
  %f = select i1 %lt, float %fa, float %fb
  %z = fmul float %f, %f
  %y0 = call float @llvm.fma.f32(float F(7.0376836292E-2), float %f, float F(-1.1514610310E-1))
  %y1 = call float @llvm.fma.f32(float %y0, float %f, float F(1.1676998740E-1))
  %y2 = call float @llvm.fma.f32(float %y1, float %f, float F(-1.2420140846E-1))
  %y3 = call float @llvm.fma.f32(float %y2, float %f, float F(1.4249322787E-1))
  %y4 = call float @llvm.fma.f32(float %y3, float %f, float F(-1.6668057665E-1))
  %y5 = call float @llvm.fma.f32(float %y4, float %f, float F(2.0000714765E-1))
  %y6 = call float @llvm.fma.f32(float %y5, float %f, float F(-2.4999993993E-1))
  %y7 = call float @llvm.fma.f32(float %y6, float %f, float F(3.3333331174E-1))
  %y8 = fmul float %y7, %f
  %y9 = fmul float %y8, %z
  %ef = sitofp i32 %e to float
  %y10 = call float @llvm.fma.f32(float %ef, float F(-2.12194440e-4), float %y9)
  %y11 = call float @llvm.fma.f32(float %z, float F(-0.5), float %y10)
  %r0 = fadd float %f, %y11
  %r1 = call float @llvm.fma.f32(float %ef, float F(0.693359375), float %r0)
  %zero = fcmp oeq float %x, F(0.0)
  %r2 = select i1 %zero, float 0xFFF0000000000000, float %r1
  %neg = fcmp olt float %x, F(0.0)
  %r3 = select i1 %neg, float 0x7FF8000000000000, float %r2
  %inf = fcmp oeq float %x, 0x7FF0000000000000
  %r4 = select i1 %inf, float %x, float %r3
  %nan = fcmp uno float %x, %x
  %r5 = select i1 %nan, float %x, float %r4
  ret float %r5
}

; log(1 + y), accurate for small y (Goldberg's trick).
define float @mixc_log1p(float %y) #0 {
  %u = fadd float %y, F(1.0)
  %d = fsub float %u, F(1.0)
  %l = call float @mixc_log(float %u)
  %q = fdiv float %y, %d
  %r0 = fmul float %l, %q
  %one = fcmp oeq float %d, F(0.0)
  %r1 = select i1 %one, float %y, float %r0
  %inf = fcmp oeq float %u, 0x7FF0000000000000
  %r2 = select i1 %inf, float %u, float %r1
  ret float %r2
}

; exp(x) - 1, accurate for small x (Kahan's trick).
define float @mixc_expm1(float %x) #0 {
  %u = call float @mixc_exp(float %x)
  %um1 = fsub float %u, F(1.0)
  %l = call float @mixc_log(float %u)
  %q = fdiv float %x, %l
  %r0 = fmul float %um1, %q
  %m1 = fcmp oeq float %um1, F(-1.0)
  %r1 = select i1 %m1, float F(-1.0), float %r0
  %one = fcmp oeq float %u, F(1.0)
  %r2 = select i1 %one, float %x, float %r1
  %inf = fcmp oeq float %u, 0x7FF0000000000000
  %r3 = select i1 %inf, float %u, float %r2
  ret float %r3
}

define float @mixc_sigmoid(float %x) #0 {
  %a = call float @llvm.fabs.f32(float %x)
  %na = fneg float %a
  %e = call float @mixc_exp(float %na)
  %d = fadd float %e, F(1.0)
  %p = fdiv float F(1.0), %d
  %n = fdiv float %e, %d
  %pos = fcmp oge float %x, F(0.0)
  %r = select i1 %pos, float %p, float %n
  ret float %r
}

define float @mixc_softplus(float %x) #0 {
  %a = call float @llvm.fabs.f32(float %x)
  %na = fneg float %a
  %e = call float @mixc_exp(float %na)
  %l = call float @mixc_log1p(float %e)
  %s = fadd float %x, %l
  %pos = fcmp ogt float %x, F(0.0)
  %r = select i1 %pos, float %s, float %l
  ret float %r
}

define float @mixc_logsigmoid(float %x) #0 {
  %n = fneg float %x
  %s = call float @mixc_softplus(float %n)
  %r = fneg float %s
  ret float %r
}

define float @mixc_silu(float %x) #0 {
  %s = call float @mixc_sigmoid(float %x)
  %r = fmul float %x, %s
  ret float %r
}

define float @mixc_elu(float %x) #0 {
  %e = call float @mixc_expm1(float %x)
  %pos = fcmp ogt float %x, F(0.0)
  %r = select i1 %pos, float %x, float %e
  ret float %r
}

define float @mixc_elu_plus_one(float %x) #0 {
  %e = call float @mixc_exp(float %x)
  %p = fadd float %x, F(1.0)
  %pos = fcmp ogt float %x, F(0.0)
  %r = select i1 %pos, float %p, float %e
  ret float %r
}

define float @mixc_tanh(float %x) #0 {
  %a = call float @llvm.fabs.f32(float %x)
  %a2 = fadd float %a, %a
  %t = call float @mixc_expm1(float %a2)
  %d = fadd float %t, F(2.0)
  %r0 = fdiv float %t, %d
  %big = fcmp ogt float %a, F(9.1)
  %r1 = select i1 %big, float F(1.0), float %r0
  %r = call float @llvm.copysign.f32(float %r1, float %x)
  ret float %r
}

; sin and cos: Cody-Waite reduction by pi/2 (three-part constant, exact for
; |x| up to about 1e5), then Cephes polynomials on [-pi/4, pi/4].
define float @mixc_sincos(float %x, i32 %shift) #0 {
  %t = fmul float %x, F(0.636619772367581343)
  %j = call float @llvm.rint.f32(float %t)
  %nj = fneg float %j
  %r0 = call float @llvm.fma.f32(float %nj, float F(1.57079601287841796875), float %x)
  %r1 = call float @llvm.fma.f32(float %nj, float F(3.13916473048215266317e-07), float %r0)
  %r = call float @llvm.fma.f32(float %nj, float F(5.39030253e-15), float %r1)
  %z = fmul float %r, %r
  %s0 = call float @llvm.fma.f32(float F(-1.9515295891E-4), float %z, float F(8.3321608736E-3))
  %s1 = call float @llvm.fma.f32(float %s0, float %z, float F(-1.6666654611E-1))
  %s2 = fmul float %s1, %z
  %s = call float @llvm.fma.f32(float %s2, float %r, float %r)
  %c0 = call float @llvm.fma.f32(float F(2.443315711809948E-5), float %z, float F(-1.388731625493765E-3))
  %c1 = call float @llvm.fma.f32(float %c0, float %z, float F(4.166664568298827E-2))
  %c2 = fmul float %c1, %z
  %h = call float @llvm.fma.f32(float F(-0.5), float %z, float F(1.0))
  %c = call float @llvm.fma.f32(float %c2, float %z, float %h)
  %ji = call i32 @llvm.fptosi.sat.i32.f32(float %j)
  %qs = add i32 %ji, %shift
  %q = and i32 %qs, 3
  %odd = and i32 %q, 1
  %useC = icmp ne i32 %odd, 0
  %v = select i1 %useC, float %c, float %s
  %hi = and i32 %q, 2
  %negate = icmp ne i32 %hi, 0
  %nv = fneg float %v
  %res = select i1 %negate, float %nv, float %v
  ret float %res
}

define float @mixc_sin(float %x) #0 {
  %r = call float @mixc_sincos(float %x, i32 0)
  ret float %r
}

define float @mixc_cos(float %x) #0 {
  %r = call float @mixc_sincos(float %x, i32 1)
  ret float %r
}

; x^y with C's powf conventions for the cases mixers meet.
define float @mixc_pow(float %x, float %y) #0 {
  %ax = call float @llvm.fabs.f32(float %x)
  %l = call float @mixc_log(float %ax)
  %t = fmul float %y, %l
  %nt = fneg float %t
  %lo0 = call float @llvm.fma.f32(float %y, float %l, float %nt)
  %at = call float @llvm.fabs.f32(float %t)
  %fin = fcmp olt float %at, 0x7FF0000000000000
  %lo = select i1 %fin, float %lo0, float F(0.0)
  %e = call float @mixc_exp(float %t)
  %m = call float @llvm.fma.f32(float %e, float %lo, float %e)
  %ry = call float @llvm.rint.f32(float %y)
  %isint = fcmp oeq float %ry, %y
  %h = fmul float %y, F(0.5)
  %rh = call float @llvm.rint.f32(float %h)
  %even = fcmp oeq float %rh, %h
  %neg = fcmp olt float %x, F(0.0)
  %nm = fneg float %m
  %odd = xor i1 %even, true
  %flip = and i1 %neg, %odd
  %m1 = select i1 %flip, float %nm, float %m
  %notint = xor i1 %isint, true
  %bad = and i1 %neg, %notint
  %m2 = select i1 %bad, float 0x7FF8000000000000, float %m1
  %y0 = fcmp oeq float %y, F(0.0)
  %x1 = fcmp oeq float %x, F(1.0)
  %trivial = or i1 %y0, %x1
  %m3 = select i1 %trivial, float F(1.0), float %m2
  ret float %m3
}

attributes #0 = { alwaysinline nounwind }
