package broker

// CheckBlocked is Service.checkBlocked, the exchange's block check, for
// the external tests.
var CheckBlocked = (*Service).checkBlocked
