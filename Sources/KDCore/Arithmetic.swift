/// Size arithmetic on numbers read from files: nil instead of a wrapped or trapping result.

/// The product of `factors`, or nil when it overflows Int (or a factor is negative).
public func checkedProduct(_ factors: [Int]) -> Int? {
    var product = 1
    for factor in factors {
        guard factor >= 0 else { return nil }
        let (value, overflow) = product.multipliedReportingOverflow(by: factor)
        if overflow { return nil }
        product = value
    }
    return product
}
