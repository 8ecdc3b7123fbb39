//! Rate limits and quotas per tenant and per reseller (issue 4). Not built yet:
//! every authenticated request is admitted.
